"""The pieces of Train_ResNet.py's recipe: data, augmentation, optimizer, callbacks, outputs.

* ``check_split`` / ``training_datasets``: list and verify a projection's
  training and validation images, and build their tf.data pipelines.
* ``build_augmentation``: the reference's augmentation as Keras layers;
  ``make_augmentation``: it and the optional gray-level one, as one function.
* ``make_optimizer`` / ``cosine_decay``: the optimizer by name, and the optional schedule.
* ``HistoryRecorder``: the reference's history txt files, written every epoch
  and continued (not restarted) when a killed run resumes.
* ``AtomicModelCheckpoint``: Keras' best-checkpoint saving, without half-written files.
* ``data_fingerprint``: which images a run trained on, to compare on resume.
* ``StopOnNonFiniteLoss``: a diverged run stops with an error, unsaved.
* ``choose_strategy``: one device, all GPUs, or several nodes.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import keras
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import tensorflow as tf
from matplotlib.ticker import MaxNLocator
from sklearn.utils.class_weight import compute_class_weight

from .conventions import (
    CLASSES,
    DatasetError,
    ImageRecord,
    checkpoint_epoch,
    list_class_images,
    split_dir,
)
from .files import atomic_write
from .network import MIN_IMAGE_SIZE
from .preprocessing import ImageReadError, read_grayscale, training_dataset

# One value per epoch, numpy.savetxt, as the reference wrote them.
HISTORY_FILES = {
    "loss_train.txt": "loss",
    "acc_train.txt": "acc",
    "loss_val.txt": "val_loss",
    "acc_val.txt": "val_acc",
}
HISTORY_CSV = "history.csv"
CURVES_FILE = "training_curves.png"
# Decoded images are cached in memory when they take at most this much.
CACHE_LIMIT_BYTES = 4 * 2**30


# ----------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------


def check_images(records: list[ImageRecord], workers: int = 4) -> None:
    """Decode every image once; stop at the first unreadable or too-small one.

    A corrupt file found in epoch 37 would waste hours; finding it here costs
    one decode per image (threads: OpenCV releases the GIL).
    """

    def check(record: ImageRecord) -> str | None:
        try:
            image = read_grayscale(record.path)
        except ImageReadError as error:
            return str(error)
        if min(image.shape) < MIN_IMAGE_SIZE:
            return (
                f"{record.path}: image of {image.shape[0]}x{image.shape[1]} pixels is too small "
                f"for the network (at least {MIN_IMAGE_SIZE} pixels per side)"
            )
        return None

    with ThreadPoolExecutor(workers) as pool:
        for problem in pool.map(check, records):
            if problem:
                raise DatasetError(problem)


def check_split(data_root: str | Path, split: str, projection: str) -> list[ImageRecord]:
    """List and verify one split of one projection; warnings for missing classes."""
    folder = split_dir(data_root, split, projection)
    records = list_class_images(folder, what=f"{split} split")
    check_images(records)
    return records


def pooled_split(
    data_roots: Sequence[str | Path], split: str, projections: Sequence[str]
) -> list[ImageRecord]:
    """The images of ``split`` from several data roots and projections. A root without a
    projection's folder contributes nothing to it (real films, say, have no CC folder:
    phantoms provide it); at least one folder must exist."""
    records = []
    for root in data_roots:
        for projection in projections:
            if split_dir(root, split, projection).is_dir():
                records += check_split(root, split, projection)
    if not records:
        folders = [str(split_dir(r, split, p)) for r in data_roots for p in projections]
        raise DatasetError(
            f"no {split} split found: none of {', '.join(folders[:4])}"
            f"{' ...' if len(folders) > 4 else ''} exists"
        )
    return records


def build_augmentation(seed: int | None = 1) -> keras.Sequential:
    """The reference's augmentation: zoom 0.2, shifts 0.2, rotation 10 degrees, no flips.

    Keras' old ImageDataGenerator drew independent x and y zoom factors in
    [0.8, 1.2] and filled new pixels with the nearest edge value; the layers
    below do the same. They act on (B, H, W, 1) images before normalisation.
    """
    return keras.Sequential(
        [
            keras.layers.RandomRotation(10 / 360, fill_mode="nearest", seed=seed),
            keras.layers.RandomZoom(
                height_factor=(-0.2, 0.2), width_factor=(-0.2, 0.2), fill_mode="nearest", seed=seed
            ),
            keras.layers.RandomTranslation(0.2, 0.2, fill_mode="nearest", seed=seed),
        ],
        name="augmentation",
    )


def photometric_augmentation(images: tf.Tensor, seed: int | None = 1) -> tf.Tensor:
    """Gray-level augmentation: gamma, contrast, noise and blur, breast pixels only.

    Mammography systems differ in display curve, contrast, sharpness and noise;
    drawing these per image keeps a model from keying on one system's look.
    The background (gray 0) stays 0. Acts on (B, H, W, 1) images in [0, 255].

    Args:
        images: float32 batch (B, H, W, 1), gray levels 0-255.
        seed: operation seed of the random draws (None: not reproducible).

    Returns:
        The augmented batch, same shape, in [0, 255].
    """
    images = tf.convert_to_tensor(images, tf.float32)
    batch = tf.shape(images)[0]
    breast = tf.cast(images > 0, tf.float32)

    def draw(low, high, offset):
        return tf.random.uniform(
            [batch, 1, 1, 1], low, high, seed=None if seed is None else seed + offset
        )

    x = tf.clip_by_value(images / 255.0, 0.0, 1.0)
    x = x ** tf.exp(draw(np.log(0.7), np.log(1.4), 1))  # gamma 0.7-1.4
    area = tf.reduce_sum(breast, axis=(1, 2, 3), keepdims=True) + 1.0
    mean = tf.reduce_sum(x * breast, axis=(1, 2, 3), keepdims=True) / area
    x = mean + (x - mean) * draw(0.75, 1.3, 2)  # contrast around the breast mean
    # Blur: one Gaussian per batch, sigma 0-1.2 px (0: unchanged).
    sigma = tf.random.uniform([], 0.0, 1.2, seed=None if seed is None else seed + 3)
    taps = tf.range(-3.0, 4.0)
    kernel = tf.exp(-0.5 * tf.square(taps / tf.maximum(sigma, 1e-3)))
    kernel = kernel / tf.reduce_sum(kernel)
    x = tf.nn.conv2d(x, tf.reshape(kernel, [7, 1, 1, 1]), 1, "SAME")
    x = tf.nn.conv2d(x, tf.reshape(kernel, [1, 7, 1, 1]), 1, "SAME")
    noise = tf.random.normal(tf.shape(x), seed=None if seed is None else seed + 4)
    x = x + noise * draw(0.0, 0.02, 5)  # noise up to 5 gray levels
    # Keep the breast inside [1, 255] and the background exactly 0.
    return tf.clip_by_value(255.0 * x, 1.0, 255.0) * breast


Augmentation = Callable[[tf.Tensor], tf.Tensor]


def make_augmentation(
    seed: int | None = 1, geometric: bool = True, photometric: bool = False
) -> Augmentation | None:
    """The training images' augmentation, as one function on batches; None if neither part.

    Args:
        seed: seed of the random draws.
        geometric: the reference's rotation, zoom and shifts (``build_augmentation``).
        photometric: then the gray-level changes of ``photometric_augmentation``.

    Returns:
        A function from a float32 batch (B, H, W, 1), gray levels 0-255, to the
        augmented batch of the same shape, or None.
    """
    if not (geometric or photometric):
        return None
    layers = build_augmentation(seed) if geometric else None

    def augment(images: tf.Tensor) -> tf.Tensor:
        if layers is not None:
            images = layers(images, training=True)
        return photometric_augmentation(images, seed) if photometric else images

    return augment


TARGETS = ("onehot", "ordinal")
# Spread of the ordinal targets: class k's target is softmax(-ORDINAL_SPREAD * (j - k)^2)
# over the classes j (Diaz & Marathe, "Soft labels for ordinal regression", CVPR 2019).
# At 1.5 a B target is (0.15, 0.69, 0.15, 0.00): a neighbour costs little, two classes off a lot.
ORDINAL_SPREAD = 1.5


def target_matrix(kind: str, num_classes: int = len(CLASSES)) -> np.ndarray:
    """Row k: the training target of class k. "onehot": the identity; "ordinal": soft
    labels that put some weight on the neighbouring classes, so that confusing A with B
    costs less than A with D, and a label known only to a class or so (MIAS' three
    levels on four classes) is not asked with false precision."""
    if kind == "onehot":
        return np.eye(num_classes, dtype=np.float32)
    if kind == "ordinal":
        classes = np.arange(num_classes)
        logits = -ORDINAL_SPREAD * (classes[None, :] - classes[:, None]) ** 2.0
        weights = np.exp(logits)
        return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)
    raise ValueError(f"unknown targets {kind!r}; expected one of {', '.join(TARGETS)}")


@dataclass
class TrainingData:
    train: tf.data.Dataset
    validation: tf.data.Dataset
    steps_per_epoch: int
    validation_steps: int
    train_records: list[ImageRecord]
    validation_records: list[ImageRecord]
    cached: bool = False

    def class_counts(self, which: str = "train") -> dict[str, int]:
        records = self.train_records if which == "train" else self.validation_records
        return {label: sum(r.label == label for r in records) for label in CLASSES}

    def describe(self, replicas: int, global_batch_size: int) -> str:
        """One line: images per split and class, devices, batch, steps, cache."""
        return (
            f"train {len(self.train_records)} images {self.class_counts('train')}, "
            f"validation {len(self.validation_records)} images {self.class_counts('validation')}; "
            f"{replicas} replica(s), global batch {global_batch_size}, "
            f"{self.steps_per_epoch} + {self.validation_steps} steps per epoch; "
            f"decoded images {'cached in memory' if self.cached else 'not cached'}"
        )


def training_datasets(
    data_root: str | Path | Sequence[str | Path],
    projection: str | Sequence[str],
    image_size: tuple[int, int],
    global_batch_size: int,
    seed: int = 1,
    augment: bool | Augmentation | None = True,
    cache: bool | None = None,
    targets: str = "onehot",
) -> TrainingData:
    """Training (shuffled, augmented, repeated) and validation pipelines of one projection.

    Args:
        data_root: one data root, or several whose images are trained on together
            (real films and phantoms).
        projection: one projection, or several trained on together (one
            view-agnostic network); with several roots or projections, a root
            that lacks a projection's folder is skipped.
        augment: the training images' augmentation, a function on (B, H, W, 1)
            batches (``make_augmentation``); True: the reference's; False or None: none.
        targets: "onehot" or "ordinal" training targets (:func:`target_matrix`);
            validation always scores against one-hot labels.
        cache: keep decoded, resized images in memory after the first epoch.
            None (default): only if they take at most ``CACHE_LIMIT_BYTES``.
            On a 2-core machine decoding competes with training for the CPU;
            caching keeps the pipeline from slowing the model down.
    """
    if isinstance(data_root, (str, Path)) and isinstance(projection, str):
        train_records = check_split(data_root, "train", projection)
        validation_records = check_split(data_root, "validation", projection)
    else:
        roots = [data_root] if isinstance(data_root, (str, Path)) else list(data_root)
        projections = [projection] if isinstance(projection, str) else list(projection)
        train_records = pooled_split(roots, "train", projections)
        validation_records = pooled_split(roots, "validation", projections)
    if cache is None:
        needed = (len(train_records) + len(validation_records)) * image_size[0] * image_size[1] * 4
        cache = needed <= CACHE_LIMIT_BYTES

    if augment is True:
        augment = make_augmentation(seed)
    augment = augment or None  # False: none

    def pipeline(records: list[ImageRecord], training: bool) -> tf.data.Dataset:
        return training_dataset(
            [r.path for r in records],
            [r.label_index for r in records],
            image_size,
            global_batch_size,
            shuffle=training,
            seed=seed,
            augment=augment if training else None,
            repeat=training,
            cache=cache,
            targets=target_matrix(targets) if training else None,
        )

    train, validation = pipeline(train_records, True), pipeline(validation_records, False)
    return TrainingData(
        train=train,
        validation=validation,
        steps_per_epoch=math.ceil(len(train_records) / global_batch_size),
        validation_steps=math.ceil(len(validation_records) / global_batch_size),
        train_records=train_records,
        validation_records=validation_records,
        cached=cache,
    )


def data_fingerprint(data: TrainingData) -> dict[str, dict]:
    """Per split: the number of image files and a SHA-256 of their sorted names.

    A name is the path below the data root (``TrainingSet/CC_R/train/A/x.png``):
    the same images give the same fingerprint wherever the data root lies, while
    an added, removed, renamed or relabelled image changes it. Only names are
    hashed, not contents, so computing it costs nothing next to decoding.
    """

    def fingerprint(records: list[ImageRecord]) -> dict:
        names = sorted(Path(*record.path.parts[-5:]).as_posix() for record in records)
        digest = hashlib.sha256("\n".join(names).encode("utf-8")).hexdigest()
        return {"files": len(names), "names_sha256": digest}

    return {
        "train": fingerprint(data.train_records),
        "validation": fingerprint(data.validation_records),
    }


def class_weights(records: list[ImageRecord]) -> dict[int, float]:
    """Balanced class weights n / (k * n_c) (scikit-learn's 'balanced'), absent classes skipped."""
    labels = np.array([r.label_index for r in records])
    present = np.unique(labels)
    weights = compute_class_weight("balanced", classes=present, y=labels)
    return {int(c): float(w) for c, w in zip(present, weights, strict=True)}


# ----------------------------------------------------------------------------
# Optimization
# ----------------------------------------------------------------------------


def make_optimizer(
    name: str, learning_rate: float | keras.optimizers.schedules.LearningRateSchedule
):
    """The optimizer called ``name`` (Train_ResNet.py's --optimizer) at ``learning_rate``.

    "sgd" is the reference's: it compiled with ``optimizer="sgd"``, Keras' plain
    SGD without momentum. Its script also built an SGD with Nesterov momentum and
    an RMSprop that it never passed to ``compile``: they are "sgd-nesterov" and
    "rmsprop" here; "adam" adapts its steps and needs little tuning.
    """
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate)
    if name == "sgd-nesterov":
        return keras.optimizers.SGD(learning_rate, momentum=0.9, nesterov=True)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate)
    if name == "adam":
        return keras.optimizers.Adam(learning_rate)
    raise ValueError(f"unknown optimizer {name!r}: sgd, sgd-nesterov, rmsprop or adam")


def cosine_decay(learning_rate: float, decay_steps: int):
    """A rate that decays smoothly from ``learning_rate`` to 1 % of it over ``decay_steps``."""
    return keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps, alpha=0.01)


RESTART_CYCLES = 3  # cosine cycles of 1/7, 2/7 and 4/7 of the run: it ends at the minimum
RESTART_MINIMUM = 1e-6  # the lowest rate of every cycle


def cosine_restarts(learning_rate: float, total_steps: int, minimum: float = RESTART_MINIMUM):
    """Cosine decay with warm restarts (Loshchilov & Hutter, SGDR), the thesis' schedule.

    Each cycle falls from ``learning_rate`` to ``minimum`` and restarts; each is twice
    as long as the one before (t_mul 2) and starts from the same rate (m_mul 1). The
    first cycle's length makes ``RESTART_CYCLES`` whole cycles fill ``total_steps``, so
    the run ends on settled weights, as with the plain cosine schedule.
    """
    first_cycle = max(1, round(total_steps / (2**RESTART_CYCLES - 1)))
    return keras.optimizers.schedules.CosineDecayRestarts(
        learning_rate,
        first_cycle,
        t_mul=2.0,
        m_mul=1.0,
        alpha=min(1.0, minimum / learning_rate),  # Keras' alpha is a fraction of the rate
    )


# ----------------------------------------------------------------------------
# Distribution
# ----------------------------------------------------------------------------


def split_cpu(logical_devices: int) -> None:
    """Split the CPU into logical devices (to exercise MirroredStrategy without GPUs).

    Must run before TensorFlow initialises its devices.
    """
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(logical_devices)]
    )


def choose_strategy(cpu_replicas: int = 0) -> tf.distribute.Strategy:
    """Several nodes (TF_CONFIG set), all local GPUs, or the default single device.

    Args:
        cpu_replicas: > 1 mirrors over that many logical CPU devices instead
            (for testing the distributed code path on a machine without GPUs).
    """
    if os.environ.get("TF_CONFIG"):
        return tf.distribute.MultiWorkerMirroredStrategy()
    if cpu_replicas > 1:
        split_cpu(cpu_replicas)
        devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


# ----------------------------------------------------------------------------
# Callbacks and outputs
# ----------------------------------------------------------------------------


class HistoryRecorder(keras.callbacks.Callback):
    """Write the history files after every epoch, and continue them on resume.

    Per epoch it appends a row to ``history.csv`` (loss, acc, val_loss, val_acc,
    learning rate, seconds) and rewrites the reference's four txt files from it.
    On resume, ``BackupAndRestore`` brings back the weights, the optimizer (and
    with it the learning rate) and the epoch; this callback keeps the rows of
    the epochs already done and tells ``ModelCheckpoint`` the best val_acc so
    far, so that it saves only improvements. (ReduceLROnPlateau restarts its
    patience count: at worst the rate drops a few epochs later.)
    Place it before ``BackupAndRestore`` in the callback list: if a run dies
    between the two, the repeated epoch's row is dropped on resume.
    """

    def __init__(self, model_dir: Path, checkpoint=None, verbose: bool = True):
        super().__init__()
        self.model_dir = Path(model_dir)
        self.checkpoint = checkpoint
        self.verbose = verbose
        self.rows: list[dict] = []
        self._started = False
        self._epoch_start = 0.0
        self._total_epochs = None

    def on_train_begin(self, logs=None):
        self._total_epochs = self.params.get("epochs") if self.params else None

    def on_epoch_begin(self, epoch, logs=None):
        if not self._started:
            self._started = True
            self._restore(first_epoch=epoch)
        self._epoch_start = time.perf_counter()
        self._learning_rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    def _restore(self, first_epoch: int) -> None:
        path = self.model_dir / HISTORY_CSV
        if first_epoch == 0 or not path.exists():
            self.rows = []
            return
        rows = pd.read_csv(path).to_dict("records")[:first_epoch]
        if len(rows) != first_epoch:
            raise RuntimeError(
                f"{path} has {len(rows)} epochs but the backup restarts at epoch {first_epoch + 1}"
            )
        self.rows = rows
        # Checkpoints of epochs that will be redone (the run died after saving
        # them but before the backup) are removed: they may be half-written.
        for stale in self.model_dir.glob("weights-improvement-*.keras"):
            if checkpoint_epoch(stale) > first_epoch:
                stale.unlink()
        if self.checkpoint is not None:
            self.checkpoint.best = max(row["val_acc"] for row in rows)
        print(f"Resuming after epoch {first_epoch}: history restored.")

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        row = {
            "epoch": epoch + 1,
            "loss": logs.get("loss", np.nan),
            "acc": logs.get("acc", np.nan),
            "val_loss": logs.get("val_loss", np.nan),
            "val_acc": logs.get("val_acc", np.nan),
            "learning_rate": self._learning_rate,
            "seconds": round(time.perf_counter() - self._epoch_start, 3),
            # what --early-stopping watches, when it is on
            **{key: logs[key] for key in ("precision", "val_precision") if key in logs},
        }
        self.rows.append(row)
        write_history(self.model_dir, self.rows)
        if self.verbose:
            total = f"/{self._total_epochs}" if self._total_epochs else ""
            print(
                f"epoch {epoch + 1}{total}: loss {row['loss']:.4f}  acc {row['acc']:.4f}  "
                f"val_loss {row['val_loss']:.4f}  val_acc {row['val_acc']:.4f}  "
                f"lr {row['learning_rate']:.2g}  ({row['seconds']:.1f} s)",
                flush=True,
            )


class AtomicModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """``ModelCheckpoint`` whose .keras files appear complete or not at all.

    Keras writes a checkpoint in place: a full disk or a kill during the save
    would leave a truncated file under a checkpoint name, which
    ``best_checkpoint`` would later pick (for ``--init-from``, for stage 2).
    Here the model goes to a temporary file beside it (``save_model``) that
    replaces the target only once complete; on an error none is left behind
    and the error propagates. Whole models only (no ``save_weights_only``).
    """

    def __init__(self, filepath, **kwargs):
        if kwargs.get("save_weights_only"):
            raise ValueError("AtomicModelCheckpoint saves whole .keras models only")
        super().__init__(filepath, **kwargs)

    def _save_model(self, epoch, batch, logs):
        filepath = self._get_file_path(epoch, batch, logs)
        # Decides (and records the new best) as ModelCheckpoint does, with its messages.
        if not self._should_save_model(epoch, batch, logs, filepath):
            return
        save_model(self.model, Path(filepath))
        if self.verbose > 0:
            print(f"\nEpoch {epoch + 1}: finished saving model to {filepath}")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message says when."""


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stop training at the first NaN or infinite loss, by raising ``TrainingDiverged``.

    Keras' ``TerminateOnNaN`` only sets ``stop_training``: Keras then still
    validates and ends the epoch, so ``ModelCheckpoint`` and
    ``BackupAndRestore`` would save the diverged model. Raising here, with this
    callback first in the list, ends ``fit`` before any of them runs: the
    files of earlier (finite) epochs stay as they were, nothing else is added.
    """

    def __init__(self):
        super().__init__()
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def _check(self, logs, keys, where: str) -> None:
        for key in keys:
            value = (logs or {}).get(key)
            if value is not None and not math.isfinite(float(keras.ops.convert_to_numpy(value))):
                raise TrainingDiverged(f"{key} {float(value)} at epoch {self._epoch + 1}{where}")

    def on_train_batch_end(self, batch, logs=None):
        self._check(logs, ("loss",), f", batch {batch + 1}")

    def on_epoch_end(self, epoch, logs=None):
        self._check(logs, ("loss", "val_loss"), " (end of epoch)")


def write_history(model_dir: Path, rows: list[dict]) -> None:
    """history.csv (read back on resume) and the reference's txt files, each written atomically.

    A full disk during a write then leaves the previous epoch's complete file, never a cut one.
    """
    table = pd.DataFrame(rows)
    atomic_write(model_dir / HISTORY_CSV, lambda path: table.to_csv(path, index=False))
    for file_name, column in HISTORY_FILES.items():
        values = table[column].to_numpy(np.float64)
        atomic_write(model_dir / file_name, lambda path, values=values: np.savetxt(path, values))


def plot_curves(model_dir: Path, final: bool = False) -> Path:
    """Loss and accuracy, train vs validation, from history.csv -> training_curves.png.

    A dotted line marks the epoch of the best checkpoint (highest val_acc, the first to
    reach it), or with ``final`` the last epoch (a folder that holds the final weights).
    """
    table = pd.read_csv(Path(model_dir) / HISTORY_CSV)
    best = table.iloc[-1] if final else table.loc[table["val_acc"].idxmax()]
    marked = "final weights" if final else "best checkpoint"
    figure, (loss_axis, acc_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for axis, metric, title in ((loss_axis, "loss", "Loss"), (acc_axis, "acc", "Accuracy")):
        axis.plot(table["epoch"], table[metric], marker=".", label="train")
        axis.plot(table["epoch"], table[f"val_{metric}"], marker=".", label="validation")
        axis.axvline(
            best["epoch"],
            color="gray",
            ls=":",
            label=f"{marked} (epoch {best['epoch']:.0f})",
        )
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        axis.set_xlabel("epoch")
        axis.set_ylabel(metric if metric == "loss" else "accuracy")
        axis.set_title(title)
        axis.grid(alpha=0.3)
        axis.legend()
    acc_axis.set_ylim(-0.02, 1.02)
    figure.suptitle(
        f"{Path(model_dir).name}: {'final' if final else 'best'} val_acc {best['val_acc']:.2f}"
    )
    figure.tight_layout()
    target = Path(model_dir) / CURVES_FILE
    try:
        atomic_write(target, lambda path: figure.savefig(path, dpi=100))
    finally:
        plt.close(figure)
    return target


def save_model(model: keras.Model, path: Path, include_optimizer: bool = True) -> Path:
    """Save a .keras model atomically (optionally without the optimizer state, to ship it)."""
    if include_optimizer:
        return atomic_write(path, model.save)
    # A new, uncompiled model from the architecture (clone_model would also copy the
    # compile state, and with it the optimizer's slots: 3x the file size with Adam).
    bare = keras.Model.from_config(model.get_config())
    bare.set_weights(model.get_weights())
    return atomic_write(path, bare.save)
