"""Names, folders and file-name conventions every stage agrees on.

This module is the single place where the class order, the projections and the
dataset layout of the reference tutorial are written down::

    <data_root>/TrainingSet/<PROJ>/train/<CLASS>/<subject>_<CLASS>_<PROJ>.png
    <data_root>/ValidationSet/<PROJ>/validation/<CLASS>/...
    <test_root>/<PROJ>/test/<CLASS>/...          (test_root is usually TestSet)
    <models_root>/<PROJ>_model/                   (checkpoints, history, logs)
    <masks_root>/<PROJ>/test/<CLASS>/<same name>  (dense-tissue masks, 255 = dense;
                                                   masks_root is usually DenseMasks/TestSet)

It imports nothing from the rest of the package: every stage may use it, it uses no stage.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

# BI-RADS density classes; the index in this tuple is the class index (0..3)
# used by every model output, prediction file and metric.
CLASSES = ("A", "B", "C", "D")
NUM_CLASSES = len(CLASSES)

# Smallest image side the network accepts: its five stride-2 steps leave a 2x2 map.
MIN_IMAGE_SIZE = 64

# The networks stage 1 can train (breastdensity.backbones builds them) and the side of
# the input each gets when --img-size is not given: the reference's 650 px, the thesis'
# 224 px, and a size at which the small ViT trains on a CPU. A ViT cuts its input into
# square patches of VIT_PATCH_SIZES pixels, so its side is a multiple of that.
BACKBONE_IMAGE_SIZES = {"resnet": 650, "efficientnet": 224, "vit": 224, "vit-tiny": 128}
BACKBONES = tuple(BACKBONE_IMAGE_SIZES)
VIT_PATCH_SIZES = {"vit": 32, "vit-tiny": 16}

# Mammographic projections (views): craniocaudal and mediolateral oblique,
# right and left breast. The short names are those of the prediction files.
PROJECTIONS = ("CC_R", "CC_L", "MLO_R", "MLO_L")
SHORT_NAMES = {"CC_R": "ccr", "CC_L": "ccl", "MLO_R": "mlor", "MLO_L": "mlol"}
SIDES = {"right": ("CC_R", "MLO_R"), "left": ("CC_L", "MLO_L")}

# Split name -> (top folder, inner folder), exactly as in the reference.
SPLIT_FOLDERS = {
    "train": ("TrainingSet", "train"),
    "validation": ("ValidationSet", "validation"),
    "test": ("TestSet", "test"),
}

# Extensions the loaders accept (those Keras' old directory iterator accepted).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff")

# What stage 1 writes into <PROJ>_model/ and stages 2-4 read back.
CHECKPOINT_PATTERN = "weights-improvement-{epoch:02d}-{val_acc:.2f}.keras"
FINAL_WEIGHTS = "final_weights.keras"
CONFIG_FILE = "training_config.json"

# Dense-tissue masks beside a dataset: <data_root>/DenseMasks/<same tree as the images>.
DENSE_MASKS = "DenseMasks"

_IMAGE_NAME = re.compile(
    r"^(?P<subject>.+)_(?P<label>[ABCD])_(?P<projection>CC_R|CC_L|MLO_R|MLO_L)$"
)


class DatasetError(ValueError):
    """A dataset folder or file is missing, empty or malformed."""


class DataWarning(UserWarning):
    """Something in a dataset folder was ignored; the message says what."""


@dataclass(frozen=True)
class ImageName:
    """What a file name says: ``124_1_A_CC_L.png`` -> subject 124_1, A, CC_L.

    ``label`` and ``projection`` are None when the name does not follow the
    convention; ``subject`` is then the file stem, which cannot be matched
    across projections.
    """

    subject: str
    label: str | None
    projection: str | None


@dataclass(frozen=True)
class ImageRecord:
    """One image of a split folder, with the class given by its folder."""

    path: Path
    label: str  # class folder name, one of CLASSES
    subject: str

    @property
    def label_index(self) -> int:
        return CLASSES.index(self.label)


def parse_image_name(file_name: str | Path) -> ImageName:
    """Split ``<subject>_<CLASS>_<PROJ>.<ext>`` into its parts."""
    stem = Path(file_name).stem
    match = _IMAGE_NAME.match(stem)
    if match is None:
        return ImageName(subject=stem, label=None, projection=None)
    return ImageName(**match.groupdict())


def image_file_name(subject: str, label: str, projection: str) -> str:
    """The conventional file name, e.g. ``image_file_name('124_1','A','CC_L')``."""
    if label not in CLASSES or projection not in PROJECTIONS:
        raise ValueError(f"unknown class {label!r} or projection {projection!r}")
    return f"{subject}_{label}_{projection}.png"


def split_dir(data_root: str | Path, split: str, projection: str) -> Path:
    """``<data_root>/TrainingSet/<PROJ>/train`` and friends."""
    top, inner = SPLIT_FOLDERS[split]
    return Path(data_root) / top / projection / inner


def projection_test_folder(test_root: str | Path, projection: str) -> Path:
    """``<test_root>/<PROJ>/test``; test_root is usually ``TestSet``."""
    return Path(test_root) / projection / SPLIT_FOLDERS["test"][1]


def model_dir(models_root: str | Path, projection: str) -> Path:
    """``<models_root>/<PROJ>_model``."""
    return Path(models_root) / f"{projection}_model"


def dense_mask_path(masks_root: str | Path, projection: str, label: str, file_name: str) -> Path:
    """``<masks_root>/<PROJ>/test/<CLASS>/<file_name>``: the mask of a test image.

    ``masks_root`` mirrors ``test_root``: ``DenseMasks/TestSet`` for ``TestSet``.
    """
    return projection_test_folder(masks_root, projection) / label / file_name


# What ModelCheckpoint writes with CHECKPOINT_PATTERN: epoch, then validation accuracy.
_CHECKPOINT_NAME = re.compile(r"^weights-improvement-(?P<epoch>\d+)-(?P<accuracy>\d+\.\d+)\.keras$")


def _checkpoint_fields(path: str | Path) -> re.Match:
    match = _CHECKPOINT_NAME.match(Path(path).name)
    if match is None:
        raise ValueError(f"{path}: not a checkpoint name like weights-improvement-07-0.81.keras")
    return match


def checkpoint_epoch(path: str | Path) -> int:
    """Epoch number of a ``weights-improvement-EE-A.AA.keras`` file name."""
    return int(_checkpoint_fields(path)["epoch"])


def checkpoint_accuracy(path: str | Path) -> float:
    """Validation accuracy in a ``weights-improvement-EE-A.AA.keras`` file name."""
    return float(_checkpoint_fields(path)["accuracy"])


def best_checkpoint(folder: str | Path) -> Path | None:
    """The checkpoint with the highest validation accuracy in its name (latest epoch on ties).

    Files that look like checkpoints but are not named as training names them
    (``weights-improvement-01-abc.keras``, a copy ``... (1).keras``) are not
    chosen, and a warning names them.
    """
    found = sorted(Path(folder).glob("weights-improvement-*.keras"))
    candidates = [path for path in found if _CHECKPOINT_NAME.match(path.name)]
    for other in sorted(set(found) - set(candidates)):
        warnings.warn(
            f"{other}: not named as training names checkpoints "
            "(weights-improvement-EE-A.AA.keras); ignored when choosing the best one",
            stacklevel=2,
        )
    if not candidates:
        return None
    return max(candidates, key=lambda p: (checkpoint_accuracy(p), checkpoint_epoch(p)))


def default_model_path(models_root: str | Path, projection: str) -> Path:
    """The best checkpoint of ``<models_root>/<PROJ>_model/`` (by validation accuracy
    in its name), else its ``final_weights.keras``."""
    folder = model_dir(models_root, projection)
    best = best_checkpoint(folder)
    if best is not None:
        return best
    final = folder / FINAL_WEIGHTS
    if final.exists():
        return final
    raise DatasetError(
        f"no trained model in {folder}: expected weights-improvement-*.keras or {FINAL_WEIGHTS} "
        "(train one with Train_ResNet.py, or pass --model)"
    )


def check_projection(projection: str) -> str:
    if projection not in PROJECTIONS:
        raise ValueError(
            f"unknown projection {projection!r}; expected one of {', '.join(PROJECTIONS)}"
        )
    return projection


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def list_class_images(folder: str | Path, *, what: str = "split") -> list[ImageRecord]:
    """List the images of ``folder/<CLASS>/`` in the reference order.

    Order: class folder A, B, C, D (whatever exists), then file name sorted.
    Missing or empty class folders give a warning; hidden and non-image files
    are ignored with a warning; a sub-folder that is not a class, or a folder
    with no image at all, is an error (nothing is silently dropped).

    Args:
        folder: a split folder such as ``TestSet/CC_R/test``.
        what: how to call the folder in messages (``"training split"`` ...).

    Returns:
        One ImageRecord per image.

    Raises:
        DatasetError: the folder is missing, has unknown sub-folders, or holds no image.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(
            f"{what} folder {folder} does not exist; expected class folders "
            f"{'/'.join(CLASSES)} inside it"
        )
    unexpected = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            warnings.warn(f"ignoring hidden entry {entry}", DataWarning, stacklevel=2)
        elif entry.is_dir() and entry.name not in CLASSES:
            unexpected.append(entry.name)
        elif entry.is_file():
            warnings.warn(
                f"ignoring {entry}: files must be inside a class folder {'/'.join(CLASSES)}",
                DataWarning,
                stacklevel=2,
            )
    if unexpected:
        raise DatasetError(
            f"{folder} has sub-folders that are not classes: {', '.join(unexpected)}; "
            f"class folders must be named exactly {', '.join(CLASSES)}"
        )
    records: list[ImageRecord] = []
    for label in CLASSES:
        class_folder = folder / label
        if not class_folder.is_dir():
            warnings.warn(f"class folder {class_folder} is missing", DataWarning, stacklevel=2)
            continue
        found = 0
        for path in sorted(class_folder.iterdir()):
            if path.name.startswith(".") or not path.is_file() or not is_image_file(path):
                warnings.warn(f"ignoring non-image entry {path}", DataWarning, stacklevel=2)
                continue
            records.append(ImageRecord(path, label, parse_image_name(path).subject))
            found += 1
        if found == 0:
            warnings.warn(f"class folder {class_folder} has no image", DataWarning, stacklevel=2)
    if not records:
        raise DatasetError(f"{what} folder {folder} holds no image in {'/'.join(CLASSES)}")
    return records


# ----------------------------------------------------------------------------
# Stage 0 outputs without labels: <out>/Unlabelled/<PROJ>/<subject>_<PROJ>.png
# ----------------------------------------------------------------------------

UNLABELLED_FOLDER = "Unlabelled"
# Stage 0's breast and pectoral masks: <out>/Masks/<image path without .png>_<kind>.png
MASKS_FOLDER = "Masks"
MASK_KINDS = ("breast", "pectoral")

_UNLABELLED_NAME = re.compile(r"^(?P<subject>.+)_(?P<projection>CC_R|CC_L|MLO_R|MLO_L)$")


def unlabelled_file_name(subject: str, projection: str) -> str:
    """``<subject>_<PROJ>.png``: the name of an image without a density class."""
    return f"{subject}_{check_projection(projection)}.png"


def parse_unlabelled_name(file_name: str | Path) -> ImageName:
    """``R12_CC_R.png`` -> ImageName('R12', None, 'CC_R'); labelled names are parsed too."""
    labelled = parse_image_name(file_name)
    if labelled.label is not None:
        return labelled
    match = _UNLABELLED_NAME.match(Path(file_name).stem)
    if match is None:
        return ImageName(subject=Path(file_name).stem, label=None, projection=None)
    return ImageName(subject=match["subject"], label=None, projection=match["projection"])


def stage0_mask_path(image_path: str | Path, kind: str) -> Path:
    """``TestSet/CC_R/test/A/x_A_CC_R.png`` -> ``Masks/TestSet/CC_R/test/A/x_A_CC_R_breast.png``."""
    if kind not in MASK_KINDS:
        raise ValueError(f"mask kind must be one of {', '.join(MASK_KINDS)}")
    image_path = Path(image_path)
    return Path(MASKS_FOLDER) / image_path.parent / f"{image_path.stem}_{kind}.png"


def list_unlabelled_images(folder: str | Path, projection: str) -> list[ImageRecord]:
    """Images of one projection without class, from a flat folder or an ``Unlabelled/`` tree.

    ``folder`` may be a stage-0 output (holding ``Unlabelled/``), the
    ``Unlabelled/`` folder itself (holding ``<PROJ>/``), or a flat folder whose
    file names end in ``_<PROJ>``. Records have an empty ``label``.

    Raises:
        DatasetError: the folder does not exist.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"image folder {folder} does not exist")
    if (folder / UNLABELLED_FOLDER).is_dir():
        folder = folder / UNLABELLED_FOLDER
    if (folder / projection).is_dir():
        candidates = sorted((folder / projection).iterdir())
    else:
        candidates = [
            path
            for path in sorted(folder.iterdir())
            if parse_unlabelled_name(path.name).projection == projection
        ]
    return [
        ImageRecord(path, "", parse_unlabelled_name(path.name).subject)
        for path in candidates
        if path.is_file() and not path.name.startswith(".") and is_image_file(path)
    ]
