"""Speed of the gradient attribution engine against one batched forward+backward pass, in the same run.

For a batch of B images, "one pass" is one compiled forward+backward pass of the
network on those B images (the gradient of the class scores with respect to the
input). A method that needs K gradient samples per image should then cost about
K passes: the script prints maps/s per method and the ratio
``time per batch / (K x one pass)``; goal: <= 1.5 for every method.

    python benchmarks/bench_attributions.py --img-size 128 --images 4

(``--model myproject/CC_R_model/weights-improvement-24-0.98.keras`` times a
trained model; the default is the same architecture with random weights.)
"""

from __future__ import annotations

import argparse

from _common import Timer

from breastdensity.quiet import quiet_tensorflow


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--img-size", type=int, default=128)
    parser.add_argument("--images", type=int, default=4, help="B, images explained per call")
    parser.add_argument("--batch-size", type=int, default=32, help="rows per compiled pass")
    parser.add_argument("--ig-steps", type=int, default=16)
    parser.add_argument("--eg-samples", type=int, default=16)
    parser.add_argument("--smooth-samples", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per method (best kept)")
    parser.add_argument("--model", default=None, help="a .keras model (default: random weights)")
    args = parser.parse_args()
    quiet_tensorflow()  # after the arguments: --help answers at once

    import keras
    import numpy as np
    import tensorflow as tf

    from breastdensity.cam import linear_copy
    from breastdensity.explain.attributions import (
        BASE_METHODS,
        CLASSIC_METHODS,
        GradientAttributions,
    )
    from breastdensity.network import build_resnet
    from breastdensity.preprocessing import normalize

    keras.utils.set_random_seed(0)
    model = keras.models.load_model(args.model) if args.model else build_resnet(args.img_size)
    size = int(model.input_shape[1])
    rng = np.random.default_rng(0)
    gray = rng.uniform(0, 255, (args.images, size, size, 1)).astype("float32")
    images = normalize(gray).numpy()
    classes = np.arange(args.images) % 4
    baselines = normalize(rng.uniform(0, 255, (8, size, size, 1)).astype("float32")).numpy()

    # the reference: one compiled forward+backward pass on the B images
    linear = linear_copy(model)

    @tf.function
    def one_pass(batch, targets):
        with tf.GradientTape() as tape:
            tape.watch(batch)
            scores = tf.gather(linear(batch, training=False), targets, batch_dims=1)
        return tape.gradient(scores, batch)

    def best_time(function) -> float:
        function()  # warm up: tracing, model copies
        times = []
        for _ in range(args.repeats):
            with Timer() as timer:
                function()
            times.append(timer.seconds)
        return min(times)

    batch, targets = tf.constant(images), tf.constant(classes, tf.int32)
    reference = best_time(lambda: one_pass(batch, targets).numpy())

    attributions = GradientAttributions(
        model,
        baselines,
        ig_steps=args.ig_steps,
        eg_samples=args.eg_samples,
        smooth_samples=args.smooth_samples,
        batch_size=args.batch_size,
    )
    samples = {  # K, gradient samples per image
        "saliency": 1,
        "smoothgrad": args.smooth_samples,
        "integrated_gradients": args.ig_steps,
        "backprop": 1,
        "deconvolution": 1,
        "gradient_input": 1,
        "ig_black": args.ig_steps,
        "ig_black_white": 2 * args.ig_steps,
        "expected_gradients": args.eg_samples,
    }
    print(
        f"{size} px, B = {args.images} images, {args.batch_size} rows per compiled pass, "
        f"best of {args.repeats}"
    )
    print(
        f"  one forward+backward pass on the B images: {1000 * reference:8.1f} ms "
        f"({args.images / reference:.1f} images/s)"
    )
    print(f"  {'method':26s} {'K':>4s} {'maps/s':>8s} {'s/batch':>8s} {'ratio':>6s} (goal <= 1.5)")
    for name in [*CLASSIC_METHODS, *BASE_METHODS, *(f"sg_{m}" for m in BASE_METHODS)]:
        count = samples[name.removeprefix("sg_")]
        count *= args.smooth_samples if name.startswith("sg_") else 1
        seconds = best_time(lambda name=name: attributions.maps(name, images, classes))
        ratio = seconds / (count * reference)
        print(
            f"  {name:26s} {count:4d} {args.images / seconds:8.2f} {seconds:8.2f} {ratio:6.2f}"
            + ("" if ratio <= 1.5 else "  (above goal)")
        )


if __name__ == "__main__":
    main()
