"""Phantom generation speed: the current generator against an earlier commit's, in one run.

    python benchmarks/bench_phantoms.py --reference 20ea2bf --subjects 10

Both generators render the same planned subjects (4 views each) at the same
size in this process, alternating subject by subject, so that a busy, shared
CPU slows both alike. Prints seconds per image and the ratio new / old. The
reference's ``phantoms.py`` is read from git (``git show REF:...``) and loaded
as a module of the package, so both use the same conventions.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO

from breastdensity.data import phantoms

GENERATOR = "myproject/breastdensity/phantoms.py"


def load_reference(revision: str, folder: Path):
    """The generator module as it was at ``revision`` (imports resolve inside breastdensity)."""
    source = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{revision}:{GENERATOR}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = folder / "reference_phantoms.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("breastdensity._reference_phantoms", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", default="20ea2bf", help="git revision of the old generator")
    parser.add_argument("--subjects", type=int, default=10, help="subjects (4 images each)")
    parser.add_argument("--size", nargs=2, type=int, default=(650, 520), metavar=("H", "W"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        reference = load_reference(args.reference, Path(folder))
        seconds = {"reference": 0.0, "current": 0.0}
        plan = phantoms.plan_split("test", args.subjects, 5, "balanced", 0.0)
        for entry in plan:
            for name, module in (("reference", reference), ("current", phantoms)):
                start = time.perf_counter()
                module.make_subject(entry, *args.size)
                seconds[name] += time.perf_counter() - start
    images = 4 * args.subjects
    old, new = seconds["reference"] / images, seconds["current"] / images
    print(
        f"{images} images of {args.size[0]} x {args.size[1]}, one process: "
        f"reference ({args.reference}, version {reference.GENERATOR_VERSION}) {old:.3f} s/image, "
        f"current (version {phantoms.GENERATOR_VERSION}) {new:.3f} s/image, ratio {new / old:.2f}"
    )


if __name__ == "__main__":
    main()
