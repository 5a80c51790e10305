"""Shared helpers of the benchmark scripts (not part of the tutorial's package)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "myproject"))


def phantom_folder(
    out: Path, test_subjects: int, size=(325, 260), seed=99, train_subjects=0
) -> Path:
    """A phantom dataset for a benchmark (made once, reused)."""
    from breastdensity.phantoms import generate_dataset

    if not (out / "manifest.csv").exists():
        generate_dataset(
            out, (train_subjects, 0, test_subjects), size, seed=seed, workers=os.cpu_count() or 1
        )
    return out


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
