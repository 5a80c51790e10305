"""Stage 2 speed and memory: files -> probabilities vs model.predict on arrays in memory.

Throughput: ``predict_records`` (the code behind Prediction_ResNet.py: decode +
resize + normalise in a tf.data pipeline, then the model) against
``model.predict`` on the same images already preprocessed in memory, same
batch. Goal: ratio >= 0.8.

Memory: peak resident memory of a fresh process predicting 100 and 1,000
images; goal: within 10 %.

    python benchmarks/bench_prediction.py --img-size 650 --images 64 --batch-size 8
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import Timer, phantom_folder

from breastdensity.quiet import quiet_tensorflow


def predict_files(data: Path, count: int, img_size: int, batch: int) -> dict:
    """Run in a child process: predict `count` images, report peak memory."""
    import keras

    from breastdensity.conventions import list_class_images, projection_test_folder
    from breastdensity.inference import predict_records
    from breastdensity.network import build_resnet

    keras.utils.set_random_seed(0)
    model = build_resnet(img_size)
    records = list_class_images(projection_test_folder(data / "TestSet", "CC_R"))
    records = (records * (count // len(records) + 1))[:count]
    result = predict_records(model, records, batch_size=batch)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"images": len(result.records), "peak_mb": peak_kb / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--img-size", type=int, default=650)
    parser.add_argument("--images", type=int, default=64, help="images for the throughput test")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--memory-counts", type=int, nargs=2, default=(100, 1000))
    parser.add_argument(
        "--data", type=Path, default=Path(tempfile.gettempdir()) / "bench_phantoms_test"
    )
    parser.add_argument("--child", nargs=1, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    quiet_tensorflow()  # after the arguments: --help answers at once
    data = phantom_folder(args.data, test_subjects=100, size=(650, 520))
    if args.child:
        print(json.dumps(predict_files(data, args.child[0], args.img_size, args.batch_size)))
        return

    import keras
    import numpy as np

    from breastdensity.conventions import list_class_images, projection_test_folder
    from breastdensity.inference import predict_records
    from breastdensity.network import build_resnet
    from breastdensity.preprocessing import load_image

    keras.utils.set_random_seed(0)
    model = build_resnet(args.img_size)
    records = list_class_images(projection_test_folder(data / "TestSet", "CC_R"))[: args.images]
    arrays = np.stack([load_image(r.path, args.img_size) for r in records])
    model.predict(arrays[: args.batch_size], batch_size=args.batch_size, verbose=0)  # warm up
    predict_records(model, records[: args.batch_size], batch_size=args.batch_size)
    with Timer() as memory_timer:
        model.predict(arrays, batch_size=args.batch_size, verbose=0)
    with Timer() as files_timer:
        predict_records(model, records, batch_size=args.batch_size)
    in_memory = len(records) / memory_timer.seconds
    end_to_end = len(records) / files_timer.seconds
    print(f"prediction at {args.img_size} px, batch {args.batch_size}, {len(records)} images")
    print(f"  model.predict on arrays in memory : {in_memory:6.2f} images/s")
    print(f"  files -> probabilities (stage 2)  : {end_to_end:6.2f} images/s")
    print(f"  ratio                             : {end_to_end / in_memory:.3f}  (goal >= 0.8)")

    peaks = {}
    for count in args.memory_counts:
        output = subprocess.run(
            [
                sys.executable,
                __file__,
                "--img-size",
                str(args.img_size),
                "--batch-size",
                str(args.batch_size),
                "--data",
                str(args.data),
                "--child",
                str(count),
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        peaks[count] = json.loads(output.strip().splitlines()[-1])["peak_mb"]
    small, large = args.memory_counts
    print(f"  peak memory, {small} images : {peaks[small]:7.1f} MB")
    print(f"  peak memory, {large} images: {peaks[large]:7.1f} MB")
    print(
        f"  growth                   : {100 * (peaks[large] / peaks[small] - 1):+.1f} %  (goal within 10 %)"
    )


if __name__ == "__main__":
    main()
