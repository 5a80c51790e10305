"""Loading trained models and predicting folders of images (stage 2, notebooks, benchmarks)."""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from .conventions import (
    CONFIG_FILE,
    FINAL_WEIGHTS,
    NUM_CLASSES,
    DatasetError,
    ImageRecord,
    parse_image_name,
)
from .preprocessing import model_image_size, prediction_dataset


def load_model(path: str | Path):
    """Load a .keras classifier for inference and check it fits the pipeline."""
    path = Path(path)
    if path.is_dir():
        raise DatasetError(
            f"{path} is a folder, not a model file: give a .keras file inside it "
            f"(such as {FINAL_WEIGHTS} or a weights-improvement-*.keras checkpoint)"
        )
    if not path.is_file():
        raise DatasetError(f"model file {path} does not exist")
    if path.suffix == ".keras" and not zipfile.is_zipfile(path):
        # Keras would report "File not found" for a file that is there.
        raise DatasetError(
            f"{path}: not a Keras model file (a .keras file is a zip archive; this one is "
            "truncated, corrupt or something else): copy or train it again"
        )
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as error:  # noqa: BLE001 - any loading failure is reported with the file
        raise DatasetError(
            f"{path}: cannot load the model ({type(error).__name__}: {error})"
        ) from error
    shape = model.input_shape
    if isinstance(shape, list) or len(shape) != 4 or shape[-1] != 3:
        raise DatasetError(f"{path}: expected an image model with input (H, W, 3), found {shape}")
    if model.output_shape[-1] != NUM_CLASSES:
        raise DatasetError(
            f"{path}: the model has {model.output_shape[-1]} outputs, expected {NUM_CLASSES} classes"
        )
    model_image_size(model)  # raises if the size is not fixed
    return model


def trained_projection(model_path: str | Path) -> str | None:
    """The projection a model was trained on, from the training_config.json beside it (or None)."""
    config = Path(model_path).parent / CONFIG_FILE
    if not config.is_file():
        return None
    try:
        return json.loads(config.read_text()).get("projection")
    except (ValueError, AttributeError) as error:
        raise DatasetError(f"{config}: not a readable training configuration ({error})") from error


def check_projection_match(
    model_path: str | Path,
    records: list[ImageRecord],
    projection: str,
    allow_mismatch: bool = False,
    flag: str = "--allow-projection-mismatch",
) -> str | None:
    """Refuse a model or images of another projection than ``projection``.

    The model's projection comes from its ``training_config.json``; the
    images' from their names (``<subject>_<CLASS>_<PROJ>.png``). Unknown
    (no config, unconventional names) is not a mismatch.

    Args:
        flag: how the caller's user allows a mismatch, named in the message.

    Returns:
        The model's training projection, or None when unknown.

    Raises:
        DatasetError: a mismatch, unless ``allow_mismatch``.
    """
    trained = trained_projection(model_path)
    problems = []
    if trained is not None and trained != projection:
        problems.append(f"the model {model_path} was trained on {trained} (its {CONFIG_FILE})")
    named = [parse_image_name(r.path).projection for r in records]
    others = sorted({p for p in named if p is not None and p != projection})
    if others:
        count = sum(p in others for p in named)
        problems.append(f"{count} of {len(records)} images are named as {', '.join(others)}")
    if problems and not allow_mismatch:
        raise DatasetError(
            f"projection {projection} requested, but {' and '.join(problems)}; use the model and "
            f"images of {projection}, or set {flag} if this is really intended"
        )
    return trained


@dataclass
class PredictionResult:
    records: list[ImageRecord]  # images that were predicted, in folder order
    probabilities: np.ndarray  # (N, 4)
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (file, reason)


def predict_records(
    model,
    records: list[ImageRecord],
    batch_size: int = 8,
    skip_bad: bool = False,
) -> PredictionResult:
    """Class probabilities for ``records``, streamed in batches (memory does not grow with N).

    Args:
        model: a loaded classifier; its input size decides the resize.
        records: the images, in the order of the output rows.
        batch_size: images per forward pass.
        skip_bad: drop unreadable images (listed in ``skipped``) instead of
            stopping at the first with an error naming it.

    Raises:
        DatasetError: an unreadable image when skip_bad is False.
    """
    size = model_image_size(model)
    dataset = prediction_dataset([r.path for r in records], size, batch_size)
    kept, chunks, skipped = [], [], []
    for images, ok, index in dataset:
        ok, index = ok.numpy(), index.numpy()
        if not ok.all():
            bad = [records[i].path for i in index[~ok]]
            if not skip_bad:
                raise DatasetError(
                    f"{bad[0]}: cannot decode the image (corrupt, truncated or not an image); "
                    "fix or remove it, or pass --skip-bad to predict the others"
                )
            skipped += [(path, "cannot decode the image") for path in bad]
        # The last, smaller batch is padded to the full size: Keras' compiled predict
        # step then keeps one input shape (no retracing) and the extra rows are dropped.
        count = len(images)
        if count < batch_size:
            padding = [[0, batch_size - count]] + [[0, 0]] * (len(images.shape) - 1)
            images = np.pad(np.asarray(images), padding)
        probabilities = np.asarray(model.predict_on_batch(images))[:count][ok]
        chunks.append(probabilities)
        kept += [records[i] for i in index[ok]]
    matrix = np.concatenate(chunks) if chunks else np.zeros((0, NUM_CLASSES), np.float32)
    return PredictionResult(kept, matrix.astype(np.float64), skipped)
