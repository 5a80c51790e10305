"""Shared helpers of the benchmark scripts (not part of the tutorial's package)."""

from __future__ import annotations

import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def phantom_folder(
    out: Path, test_subjects: int, size=(325, 260), seed=99, train_subjects=0
) -> Path:
    """A phantom dataset for a benchmark (made once, reused)."""
    from breastdensity.data.phantoms import generate_dataset

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
