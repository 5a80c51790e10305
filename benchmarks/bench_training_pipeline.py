"""Does the input pipeline starve training? Images/s with the full pipeline vs tensors in memory.

The arms train the same model (same size, batch and number of steps), fed by
``breastdensity.training.training_datasets`` (decode PNG, resize, augment,
normalise, prefetch) with decoded images cached in memory (the default when they
fit in 4 GiB) or decoded every time, and by preprocessed tensors already in
memory. Goal: ratio pipeline / in-memory >= 0.9.

    python benchmarks/bench_training_pipeline.py --img-size 128 --batch-size 16 --steps 10 --rounds 15
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _common import Timer

from breastdensity.quiet import quiet_tensorflow


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--img-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--steps", type=int, default=10, help="timed training steps per arm and round"
    )
    parser.add_argument(
        "--rounds", type=int, default=15, help="rounds of the three arms; medians compared"
    )
    parser.add_argument(
        "--data", type=Path, default=Path(tempfile.gettempdir()) / "bench_phantoms_train"
    )
    args = parser.parse_args()
    quiet_tensorflow()  # after the arguments: --help answers at once

    import keras
    import numpy as np
    import tensorflow as tf

    from breastdensity.network import build_resnet
    from breastdensity.training import training_datasets

    data_root = args.data
    if not (data_root / "manifest.csv").exists():
        from breastdensity.data.phantoms import generate_dataset

        generate_dataset(data_root, (60, 8, 0), (650, 520), seed=98, workers=2)
    size = (args.img_size, args.img_size)
    cached = training_datasets(data_root, "CC_R", size, args.batch_size, seed=1, cache=True)
    uncached = training_datasets(data_root, "CC_R", size, args.batch_size, seed=1, cache=False)
    # The in-memory arm: the same number of preprocessed (and augmented) batches, as tensors.
    batches = list(uncached.train.take(args.steps))
    memory = (
        tf.data.Dataset.from_tensor_slices(
            (np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches]))
        )
        .batch(args.batch_size)
        .repeat()
    )

    def warmed_up_model(dataset):
        keras.utils.set_random_seed(1)
        model = build_resnet(args.img_size)
        model.compile("sgd", "categorical_crossentropy")
        # build, trace, and pass over every image once so the cached arm's cache is full
        steps = max(5, len(cached.train_records) // args.batch_size + 1)
        model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
        return model

    arms = {"memory": memory, "cached": cached.train, "uncached": uncached.train}
    models = {arm: warmed_up_model(dataset) for arm, dataset in arms.items()}
    # Many short runs in alternating order, median of each arm: on this 2-core VM the
    # same run varies by up to 40 % from one minute to the next.
    rates = {arm: [] for arm in arms}
    for _ in range(args.rounds):
        for arm, dataset in arms.items():
            with Timer() as timer:
                models[arm].fit(dataset, steps_per_epoch=args.steps, epochs=1, verbose=0)
            rates[arm].append(args.steps * args.batch_size / timer.seconds)
    print(
        "all rounds (images/s):",
        {arm: [round(v, 1) for v in values] for arm, values in rates.items()},
    )
    median = {arm: float(np.median(values)) for arm, values in rates.items()}
    print(
        f"training at {args.img_size} px, batch {args.batch_size}, {args.steps} steps, "
        f"{len(cached.train_records)} images of {data_root}"
    )
    print(f"  (medians of {args.rounds} alternating rounds)")
    print(f"  in-memory tensors          : {median['memory']:6.2f} images/s")
    print(
        f"  tf.data, decoded cached    : {median['cached']:6.2f} images/s   ratio {median['cached'] / median['memory']:.3f} (goal >= 0.9)"
    )
    print(
        f"  tf.data, decoding each time: {median['uncached']:6.2f} images/s   ratio {median['uncached'] / median['memory']:.3f}"
    )


if __name__ == "__main__":
    main()
