"""Does the input pipeline starve training? Images/s with the full pipeline vs tensors in memory.

Both arms train the same model (same size, batch and number of steps): once fed
by ``breastdensity.training.training_datasets`` (decode PNG, resize, augment,
normalise, prefetch), once by already preprocessed tensors held in memory.
Goal: ratio pipeline / in-memory >= 0.9.

    python benchmarks/bench_training_pipeline.py --img-size 256 --batch-size 4 --steps 60
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _common import Timer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--img-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=60, help="timed training steps per arm")
    parser.add_argument(
        "--data", type=Path, default=Path(tempfile.gettempdir()) / "bench_phantoms_train"
    )
    args = parser.parse_args()

    import keras
    import numpy as np
    import tensorflow as tf

    from breastdensity.network import build_resnet
    from breastdensity.training import training_datasets

    data_root = args.data
    if not (data_root / "manifest.csv").exists():
        from breastdensity.phantoms import generate_dataset

        generate_dataset(data_root, (60, 8, 0), (650, 520), seed=98, workers=2)
    size = (args.img_size, args.img_size)
    data = training_datasets(data_root, "CC_R", size, args.batch_size, seed=1)
    # The in-memory arm: the same number of preprocessed (and augmented) batches, as tensors.
    cached = list(data.train.take(args.steps))
    memory = (
        tf.data.Dataset.from_tensor_slices(
            (np.concatenate([b[0] for b in cached]), np.concatenate([b[1] for b in cached]))
        )
        .batch(args.batch_size)
        .repeat()
    )

    def timed(dataset) -> float:
        keras.utils.set_random_seed(1)
        model = build_resnet(args.img_size)
        model.compile("sgd", "categorical_crossentropy")
        model.fit(dataset, steps_per_epoch=5, epochs=1, verbose=0)  # build and warm up
        with Timer() as timer:
            model.fit(dataset, steps_per_epoch=args.steps, epochs=1, verbose=0)
        return args.steps * args.batch_size / timer.seconds

    in_memory = timed(memory)
    pipeline = timed(data.train)
    print(f"training at {args.img_size} px, batch {args.batch_size}, {args.steps} steps")
    print(f"  in-memory tensors : {in_memory:6.2f} images/s")
    print(f"  full tf.data input: {pipeline:6.2f} images/s")
    print(f"  ratio             : {pipeline / in_memory:.3f}  (goal >= 0.9)")


if __name__ == "__main__":
    main()
