"""Loading trained models and predicting folders of images (stage 2, notebooks, benchmarks)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from .conventions import NUM_CLASSES, DatasetError, ImageRecord
from .preprocessing import model_image_size, prediction_dataset


def load_model(path: str | Path):
    """Load a .keras classifier for inference and check it fits the pipeline."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"model file {path} does not exist")
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

    @tf.function(reduce_retracing=True)
    def forward(images):
        return model(images, training=False)

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
        probabilities = forward(images).numpy()[ok]
        chunks.append(probabilities)
        kept += [records[i] for i in index[ok]]
    matrix = np.concatenate(chunks) if chunks else np.zeros((0, NUM_CLASSES), np.float32)
    return PredictionResult(kept, matrix.astype(np.float64), skipped)
