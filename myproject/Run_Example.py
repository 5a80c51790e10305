"""The main job: stages 2 -> 4 on the shipped example, then where the results are.

Run by ``make demo`` from the repository root (or ``python Run_Example.py``
from myproject/). With the shipped models and TestSet it takes a few minutes
on a 2-core CPU:

1. stage 2, ``Prediction_ResNet.py --projection all`` -> ``Prediction/predictions_*.txt|csv``
2. stage 3, ``Figure_merit.ipynb`` -> ``Prediction/metrics.csv``, ``Prediction/CONFUSION_MATRICES/``
3. stage 4, ``ClassActivationMaps.ipynb``, all projections in one run -> ``MAPS/<PROJ>/<CLASS>/``

Executed copies of the notebooks go to ``executed/`` (ignored by git); the
tracked notebooks stay without outputs. Any failing stage stops the job with a
non-zero exit status.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from breastdensity.conventions import PROJECTIONS

HERE = Path(__file__).resolve().parent


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Run stages 2-4 on the shipped example (or another test set).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--models-root", type=Path, default=Path("."))
    parser.add_argument("--test-root", type=Path, default=Path("TestSet"))
    parser.add_argument("--predictions-dir", type=Path, default=Path("Prediction"))
    parser.add_argument("--maps-dir", type=Path, default=Path("MAPS"))
    parser.add_argument("--executed-dir", type=Path, default=Path("executed"))
    parser.add_argument("--projections", nargs="+", choices=PROJECTIONS, default=list(PROJECTIONS))
    parser.add_argument("--n-bootstrap", type=int, default=2000, help="stage 3 bootstrap resamples")
    parser.add_argument(
        "--compare-max-images",
        type=int,
        default=1,
        help="stage 4 method-comparison grids per projection",
    )
    return parser.parse_args(argv)


def banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def run_notebook(name: str, output: Path, parameters: dict) -> None:
    import papermill  # here, not at the top: a second of imports that --help does not need

    output.parent.mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(
        str(HERE / name),
        str(output),
        parameters=parameters,
        cwd=str(Path.cwd()),
        kernel_name="python3",
        progress_bar=True,  # one bar per notebook: cells done of all
        # the kernel's start-up warning about its local TCP sockets is noise
        # here; its errors still show
        extra_arguments=["--IPKernelApp.log_level=ERROR"],
    )


def main(argv=None) -> int:
    args = parse_arguments(argv)
    started = time.perf_counter()
    timings = {}
    try:
        banner("Stage 2: Prediction_ResNet.py")
        clock = time.perf_counter()
        command = [
            sys.executable,
            str(HERE / "Prediction_ResNet.py"),
            "--models-root",
            str(args.models_root),
            "--test-root",
            str(args.test_root),
            "--output-dir",
            str(args.predictions_dir),
        ]
        if set(args.projections) == set(PROJECTIONS):
            subprocess.run([*command, "--projection", "all"], check=True)  # all or nothing
        else:
            for projection in args.projections:
                subprocess.run([*command, "--projection", projection], check=True)
        timings["stage 2 (predictions)"] = time.perf_counter() - clock

        banner("Stage 3: Figure_merit.ipynb")
        clock = time.perf_counter()
        run_notebook(
            "Figure_merit.ipynb",
            args.executed_dir / "Figure_merit.ipynb",
            {
                "predictions_dir": str(args.predictions_dir),
                "output_dir": str(args.predictions_dir),
                "test_root": str(args.test_root),
                "n_bootstrap": args.n_bootstrap,
            },
        )
        timings["stage 3 (figures of merit)"] = time.perf_counter() - clock

        banner("Stage 4: ClassActivationMaps.ipynb")
        clock = time.perf_counter()
        run_notebook(
            "ClassActivationMaps.ipynb",
            args.executed_dir / "ClassActivationMaps.ipynb",
            {
                "models_root": str(args.models_root),
                "test_root": str(args.test_root),
                "projections": list(args.projections),
                "output_dir": str(args.maps_dir),
                "compare_max_images": args.compare_max_images,
            },
        )
        timings["stage 4 (class activation maps)"] = time.perf_counter() - clock
    except subprocess.CalledProcessError as error:
        print(
            f"\nFAILED: stage 2 exited with status {error.returncode} (see above).", file=sys.stderr
        )
        return 1
    except Exception as error:  # noqa: BLE001 - papermill raises many kinds; report and fail
        print(f"\nFAILED: {type(error).__name__}: {error}", file=sys.stderr)
        return 1

    banner("Done")
    for stage, seconds in timings.items():
        print(f"{stage}: {seconds:.0f} s")
    print(
        f"\nResults (all paths relative to {Path.cwd()}):\n"
        f"  predictions          {args.predictions_dir}/predictions_<ccr|ccl|mlor|mlol>.txt and .csv\n"
        f"  figures of merit     {args.predictions_dir}/metrics.csv\n"
        f"  confusion matrices   {args.predictions_dir}/CONFUSION_MATRICES/\n"
        f"  class activation maps {args.maps_dir}/<PROJ>/<CLASS>/ (and cam_summary.csv)\n"
        f"  executed notebooks   {args.executed_dir}/\n"
        f"Total {time.perf_counter() - started:.0f} s."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
