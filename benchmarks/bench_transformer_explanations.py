"""Transformer explanations' speed: a forward pass against attention rollout, Chefer and Grad-CAM.

Arms, all on the same batch of the same ViT, each compiled once (tf.function), warmed up,
then called in turn (round robin) and timed; the ratios use each arm's fastest call:
* forward: the model's own call, compiled (the baseline of the ratios),
* ``model.predict`` (what a stage calls; for reference),
* ``TransformerExplainer.rollout`` (one forward pass, then L small matrix products),
* ``TransformerExplainer.chefer`` (one forward and one backward pass; under XLA for a
  narrow ViT such as vit-tiny, see ``explain.transformer.XLA_MAX_WIDTH``),
* ``TransformerExplainer.grad_cam`` (one forward and one backward pass, to the last block),
and, for reference, what Chefer cannot do without, compiled both ways:
* forward+backward: one forward pass and the gradient of the top score with respect to
  every block's attention probabilities (the backward pass crosses every block), no
  relevance rule; with and without XLA,
* the forward pass under XLA.
Goal: rollout and Chefer each within 2x the forward pass.

    python benchmarks/bench_transformer_explanations.py                     # vit-tiny, 128 px
    python benchmarks/bench_transformer_explanations.py --with-vit-b32      # and ViT-B/32, 224 px
"""

from __future__ import annotations

import argparse
import statistics

from _common import Timer

from breastdensity.quiet import quiet_tensorflow


def measure(name: str, batch_size: int, repeats: int) -> None:
    """Time every arm on one batch of the ViT ``name`` and print the ratios to the forward pass."""
    import keras
    import numpy as np
    import tensorflow as tf

    from breastdensity.backbones import VIT_IMAGE_SIZES, build_backbone
    from breastdensity.explain.transformer import TransformerExplainer, attention_layers

    size = VIT_IMAGE_SIZES[name]
    keras.utils.set_random_seed(0)
    model = build_backbone(name, size)
    images = np.random.default_rng(0).normal(size=(batch_size, size, size, 3))
    images = tf.constant(images.astype("float32"))  # (B, H, W, 3)
    forward = tf.function(lambda batch: model(batch, training=False))
    forward_xla = tf.function(lambda batch: model(batch, training=False), jit_compile=True)
    explainer = TransformerExplainer(model)
    # (B, heads, Q, T) x L and the (B, 4) probabilities
    parts = keras.Model(
        model.input, [*(layer.output[1] for layer in attention_layers(model)), model.output]
    )

    def forward_backward(batch):
        with tf.GradientTape() as tape:
            *attentions, probabilities = parts(batch, training=False)
            top = tf.reduce_sum(tf.reduce_max(probabilities, axis=-1))
        return tape.gradient(top, attentions)

    backward = tf.function(forward_backward)
    backward_xla = tf.function(forward_backward, jit_compile=True)
    arms = {
        "forward": lambda: forward(images).numpy(),
        "model.predict": lambda: model.predict(images, batch_size=batch_size, verbose=0),
        "rollout": lambda: explainer.rollout(images),
        "chefer": lambda: explainer.chefer(images),
        "grad_cam": lambda: explainer.grad_cam(images),
        "fwd+bwd": lambda: [g.numpy() for g in backward(images)],
        "fwd+bwd XLA": lambda: [g.numpy() for g in backward_xla(images)],
        "forward XLA": lambda: forward_xla(images).numpy(),
    }
    for function in arms.values():
        function()  # warm up: tracing
    # Round robin, so that a busy spell of the machine hits every arm alike; the fastest
    # call of each arm is its cost without interference (what timeit reports).
    times = {arm: [] for arm in arms}
    for _ in range(repeats):
        for arm, function in arms.items():
            with Timer() as timer:
                function()
            times[arm].append(timer.seconds)
    fastest = {arm: min(values) for arm, values in times.items()}
    medians = {arm: statistics.median(values) for arm, values in times.items()}
    print(
        f"\n{name}: {size}x{size}, batch {batch_size}, {model.count_params():,} parameters, "
        f"fastest and median of {repeats} calls"
    )
    for arm in arms:
        print(
            f"  {arm:14s} {1000 * fastest[arm]:8.1f} ms {fastest[arm] / fastest['forward']:5.2f}"
            f" x forward   (median {1000 * medians[arm]:8.1f} ms "
            f"{medians[arm] / medians['forward']:5.2f} x)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=16, help="vit-tiny's batch")
    parser.add_argument("--b32-batch-size", type=int, default=2, help="ViT-B/32's batch")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per arm")
    parser.add_argument("--with-vit-b32", action="store_true", help="also ViT-B/32 at 224 px")
    args = parser.parse_args()
    quiet_tensorflow()  # after the arguments: --help answers at once
    measure("vit-tiny", args.batch_size, args.repeats)
    if args.with_vit_b32:
        measure("vit", args.b32_batch_size, args.repeats)


if __name__ == "__main__":
    main()
