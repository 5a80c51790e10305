"""Loading trained models and predicting folders of images (stage 2, notebooks, benchmarks).

Any backbone of ``breastdensity.backbones`` loads here: what a stage needs (input size,
channels, the layer to explain) is read from the loaded model, not assumed.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import keras
import numpy as np

# Imported for what importing it does: it registers the custom layer of a saved ViT
# (ClassTokenAndPositions) with Keras, which safe mode needs to load such a file.
from . import backbones  # noqa: F401
from .conventions import (
    CONFIG_FILE,
    FINAL_WEIGHTS,
    NUM_CLASSES,
    DatasetError,
    ImageRecord,
    parse_image_name,
)
from .preprocessing import as_read_error, load_resized, model_image_size, prediction_dataset

# A .keras file is a zip archive (config.json + model.weights.h5). Its declared
# sizes are read before Keras opens it: a crafted file of a few MB can declare
# weights of many GB (zip or HDF5 compression of zeros) and would otherwise be
# inflated into memory before any error.
LARGEST_INFLATION = 20  # real weights barely compress; a bomb compresses 1000:1
INFLATION_CHECKED_ABOVE = 64 * 2**20  # small files may compress well (zeros at initialisation)
MEMORY_SHARE = 0.5  # a model may take at most this share of the memory available now
IN_MEMORY_SCAN_UP_TO = 512 * 2**20  # weights files up to this size are scanned from memory


def _available_memory() -> int:
    try:
        with open("/proc/meminfo") as stream:
            for line in stream:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return 2**40  # unknown: no limit from memory


def _weights_bytes(archive: zipfile.ZipFile, member: zipfile.ZipInfo) -> tuple[int, int]:
    """(bytes the HDF5 datasets hold once read, bytes they take in the file)."""
    logical = stored = 0

    def visit(_name, item):
        nonlocal logical, stored
        if isinstance(item, h5py.Dataset):
            logical += int(np.prod(item.shape, dtype=np.float64)) * item.dtype.itemsize
            stored += item.id.get_storage_size()

    if member.file_size <= IN_MEMORY_SCAN_UP_TO:  # HDF5 reads through a zip stream are slow
        source = io.BytesIO(archive.read(member))
    else:
        source = archive.open(member)
    with source, h5py.File(source, "r") as weights:
        weights.visititems(visit)
    return logical, stored


def check_model_archive(path: str | Path) -> None:
    """Refuse a .keras file that is not a Keras archive or would inflate beyond reason.

    Raises:
        DatasetError: naming the file, the sizes it declares and what to do.
    """
    path = Path(path)
    budget = int(_available_memory() * MEMORY_SHARE)
    try:
        with zipfile.ZipFile(path) as archive:
            members = {info.filename: info for info in archive.infolist()}
            if "config.json" not in members:
                raise DatasetError(
                    f"{path}: not a Keras model file (its archive has no config.json); "
                    "copy or train it again"
                )
            declared = sum(info.file_size for info in members.values())
            packed = sum(info.compress_size for info in members.values())
            logical = stored = 0
            weights = members.get("model.weights.h5")
            if weights is not None and weights.compress_type == zipfile.ZIP_STORED:
                logical, stored = _weights_bytes(archive, weights)
    except DatasetError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, KeyError, RuntimeError) as error:
        raise DatasetError(
            f"{path}: not a readable Keras model file ({type(error).__name__}: {error}); "
            "it is truncated or corrupt: copy or train it again"
        ) from error
    largest = max(declared, logical)
    inflation = max(declared / max(packed, 1), logical / max(stored, 1))
    if largest > INFLATION_CHECKED_ABOVE and inflation > LARGEST_INFLATION:
        raise DatasetError(
            f"{path}: the file declares {largest / 2**20:,.0f} MB of content packed "
            f"{inflation:,.0f}:1, which trained weights never are; it is not loaded "
            "(a damaged or crafted file): use a model file you trained or trust"
        )
    if largest > budget:
        raise DatasetError(
            f"{path}: the model declares {largest / 2**30:.1f} GB of weights, more than half of "
            f"the memory available now ({budget * 2 / 2**30:.1f} GB); it is not loaded: "
            "use a machine with more memory or a smaller model"
        )


def load_keras_file(path: str | Path) -> keras.Model:
    """Load any .keras model file after checking it; every failure names the file.

    Lambda layers and other arbitrary code are refused (Keras' safe mode).
    """
    path = Path(path)
    if path.is_dir():
        raise DatasetError(
            f"{path} is a folder, not a model file: give a .keras file inside it "
            f"(such as {FINAL_WEIGHTS} or a weights-improvement-*.keras checkpoint)"
        )
    if not path.is_file():
        raise DatasetError(f"model file {path} does not exist")
    if path.suffix != ".keras" or not zipfile.is_zipfile(path):
        # Keras would report "File not found" for a file that is there.
        raise DatasetError(
            f"{path}: not a Keras model file (a .keras file is a zip archive; this one is "
            "truncated, corrupt or something else): copy or train it again"
        )
    check_model_archive(path)
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as error:  # noqa: BLE001 - any loading failure is reported with the file
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        if "Lambda" in str(error):
            reason = "it contains a Lambda layer (arbitrary code), which is not loaded"
        raise DatasetError(
            f"{path}: cannot load the model ({type(error).__name__}: {reason})"
        ) from error


def load_model(path: str | Path):
    """Load a .keras classifier for inference and check it fits the pipeline."""
    path = Path(path)
    model = load_keras_file(path)
    shape = model.input_shape
    if isinstance(shape, list) or len(shape) != 4 or shape[-1] != 3:
        raise DatasetError(f"{path}: expected an image model with input (H, W, 3), found {shape}")
    if model.output_shape[-1] != NUM_CLASSES:
        raise DatasetError(
            f"{path}: the model has {model.output_shape[-1]} outputs, expected {NUM_CLASSES} classes"
        )
    try:
        model_image_size(model)
    except ValueError as error:
        raise DatasetError(
            f"{path}: the model has no fixed input size ({shape}); stages read the image size "
            "from the model, so save it with a fixed Input(shape=(H, W, 3))"
        ) from error
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


def read_failure(path: Path, size: tuple[int, int]) -> str:
    """Why ``path`` could not be read, naming it (read again: the pipeline keeps only a flag)."""
    try:
        load_resized(path, size)
    except Exception as error:  # noqa: BLE001 - the message is what is wanted
        return str(as_read_error(error, path))
    return f"{path}: cannot read the image"


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
                    f"{read_failure(bad[0], size)}; fix or remove it, or pass --skip-bad to predict "
                    "the others"
                )
            skipped += [(path, read_failure(path, size).removeprefix(f"{path}: ")) for path in bad]
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
