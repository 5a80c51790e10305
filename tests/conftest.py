"""Shared test helpers: quiet TensorFlow, write small PNGs, make tiny datasets."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")

from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MYPROJECT = REPO / "myproject"


def write_png(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image):
        raise OSError(f"could not write {path}")
    return path


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def corner_model(weight: float = 4.0):
    """A toy 32x32 classifier whose class-1 probability depends only on the top-left 16x16 corner.

    Its known answer makes it a test bench for explanation and fidelity code.
    """
    import keras

    inputs = keras.Input((32, 32, 3))
    corner = keras.layers.Cropping2D(((0, 16), (0, 16)))(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(corner)
    initializer = keras.initializers.Constant([[-weight, weight]] * 3)
    logits = keras.layers.Dense(2, kernel_initializer=initializer)(pooled)
    return keras.Model(inputs, keras.layers.Softmax()(logits))
