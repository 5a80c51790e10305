"""Image loading and preprocessing: the one implementation every stage uses.

The reference fed Keras' old ``ImageDataGenerator(rescale=1/255,
samplewise_center=True)`` with ``flow_from_directory(target_size=(650, 650))``.
Here the same steps are written out once::

    PNG (8- or 16-bit, gray or RGB)
      -> gray float32 in [0, 255]           read_grayscale
      -> resized to the model input, (H, W)  resize (bilinear, aspect NOT kept,
                                              as in the reference: the breast
                                              is squashed into the square)
      -> [augmentation, training only]
      -> /255, minus the image's own mean, gray repeated to 3 channels
                                             normalize  -> float32 (H, W, 3)

``load_image`` chains them for one file; ``training_dataset`` and
``prediction_dataset`` build the tf.data pipelines of stages 1 and 2 from the
same decoding and normalisation.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import tensorflow as tf

from .files import raster_problem

DEFAULT_IMAGE_SIZE = 650


class ImageReadError(ValueError):
    """An image file cannot be decoded; the message names the file."""


def _decode(data: bytes, path: str | Path) -> np.ndarray:
    problem = raster_problem(io.BytesIO(data))
    if problem is not None:
        raise ImageReadError(f"{path}: {problem}")
    array = np.frombuffer(data, dtype=np.uint8)
    image = cv2.imdecode(array, cv2.IMREAD_UNCHANGED) if array.size else None
    if image is None:
        raise ImageReadError(
            f"{path}: cannot decode the image (corrupt, truncated or not an image)"
        )
    return image


def as_read_error(error: Exception, path: str | Path) -> ImageReadError:
    """Any failure while reading one image, as the error that names the file."""
    if isinstance(error, ImageReadError):
        return error
    return ImageReadError(f"{path}: cannot read the image ({type(error).__name__}: {error})")


def to_grayscale(image: np.ndarray, path: str | Path = "<array>") -> np.ndarray:
    """Any decoded image -> float32 (H, W) gray in the 8-bit range [0, 255].

    16-bit images are scaled by 255/65535; colour images (OpenCV's BGR order)
    become gray with the ITU-R 601 luma weights; an alpha channel is dropped.
    """
    if image.dtype == np.uint8:
        scale = 1.0
    elif image.dtype == np.uint16:
        scale = 255.0 / 65535.0
    else:
        raise ImageReadError(f"{path}: unsupported pixel type {image.dtype}; expected 8 or 16 bit")
    if image.ndim == 3:
        channels = image.shape[2]
        if channels == 1:
            image = image[:, :, 0]
        elif channels in (3, 4):
            image = cv2.cvtColor(image[:, :, :3], cv2.COLOR_BGR2GRAY)
        else:
            raise ImageReadError(f"{path}: unsupported number of channels {channels}")
    elif image.ndim != 2:
        raise ImageReadError(f"{path}: unsupported image shape {image.shape}")
    return image.astype(np.float32) * np.float32(scale)


def read_grayscale(path: str | Path) -> np.ndarray:
    """Read an image file as float32 (H, W) gray in [0, 255]."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ImageReadError(f"{path}: cannot read the file ({error.strerror})") from error
    return to_grayscale(_decode(data, path), path)


def read_mask(path: str | Path) -> np.ndarray:
    """A dense-tissue (or breast) mask file as a bool (H, W) array (255 = inside)."""
    try:
        with open(path, "rb") as stream:
            problem = raster_problem(stream)
    except OSError as error:
        raise ImageReadError(f"{path}: cannot read the mask ({error.strerror})") from error
    if problem is not None:
        raise ImageReadError(f"{path}: {problem}")
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise ImageReadError(f"{path}: cannot read the mask")
    return mask > 127


def resize(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Bilinear resize of a (H, W) image to ``size`` = (height, width), aspect not kept."""
    height, width = int(size[0]), int(size[1])
    if image.shape[:2] == (height, width):
        return image
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)


def normalize(images: tf.Tensor) -> tf.Tensor:
    """(…, H, W, 1) gray in [0, 255] -> (…, H, W, 3) float32, x/255 minus its own mean.

    The mean is taken per image over all its pixels (Keras' old
    ``samplewise_center``), after the 1/255 rescale, as the reference did.
    Works on one image or a batch.
    """
    images = tf.convert_to_tensor(images, tf.float32) / 255.0
    images = images - tf.reduce_mean(images, axis=(-3, -2, -1), keepdims=True)
    return tf.repeat(images, 3, axis=-1)


def load_resized(path: str | Path, size: Sequence[int]) -> np.ndarray:
    """Read and resize one file: float32 (H, W, 1) in [0, 255]."""
    return resize(read_grayscale(path), size)[:, :, np.newaxis]


def load_image(path: str | Path, size: Sequence[int] | int = DEFAULT_IMAGE_SIZE) -> np.ndarray:
    """One file, fully preprocessed for the network: float32 (H, W, 3)."""
    if isinstance(size, int):
        size = (size, size)
    return normalize(load_resized(path, size)).numpy()


def model_image_size(model) -> tuple[int, int]:
    """(height, width) a Keras model expects, read from its input shape."""
    shape = model.input_shape
    if isinstance(shape, list):
        shape = shape[0]
    height, width = shape[1], shape[2]
    if height is None or width is None:
        raise ValueError(f"model {model.name} has no fixed input size: {shape}")
    return int(height), int(width)


def _decode_function(size: Sequence[int], tolerate_errors: bool):
    """A tf.data map: ``{"path": ...}`` -> the same element plus ``image`` (H, W, 1) and ``ok``."""
    height, width = int(size[0]), int(size[1])

    def read_one(path: bytes) -> tuple[np.ndarray, bool]:
        try:
            return load_resized(path.decode(), (height, width)), True
        except Exception as error:  # noqa: BLE001 - any failure of one file is that file's error
            if not tolerate_errors:
                raise as_read_error(error, path.decode()) from error
            return np.zeros((height, width, 1), np.float32), False

    def decode(element):
        image, ok = tf.numpy_function(read_one, [element["path"]], [tf.float32, tf.bool])
        image.set_shape((height, width, 1))
        ok.set_shape(())
        return {**element, "image": image, "ok": ok}

    return decode


def training_dataset(
    paths: Sequence[str | Path],
    labels: Sequence[int],
    size: Sequence[int],
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int | None = None,
    augment: Callable[[tf.Tensor], tf.Tensor] | None = None,
    repeat: bool = False,
    cache: bool = False,
    num_classes: int = 4,
    targets: np.ndarray | None = None,
) -> tf.data.Dataset:
    """Labelled tf.data pipeline for ``model.fit``: parallel decode + resize, augment, normalize.

    Args:
        paths: image files, in the order the output must follow (unless shuffle).
        labels: their class indices.
        size: (height, width) of the network input.
        batch_size: images per batch (the last batch may be smaller).
        shuffle: reshuffle the file order every epoch (training).
        seed: seed of the shuffle.
        augment: a function on a batch of (B, H, W, 1) images in [0, 255],
            e.g. a Keras preprocessing model, applied before normalize.
        repeat: repeat forever (training with a fixed steps_per_epoch).
        cache: keep the decoded, resized images in memory after the first
            pass (N x H x W x 4 bytes), so later epochs skip decoding; the
            augmentation still draws new transforms every epoch.
        targets: (num_classes, num_classes) matrix whose row k is the target
            of class k (default: the identity, one-hot targets).

    Yields:
        ``(images, targets)``: (B, H, W, 3) float32 and (B, num_classes).
        An unreadable file stops the pipeline (training checks every file first).
    """
    dataset = tf.data.Dataset.from_tensor_slices(
        {"path": [str(p) for p in paths], "label": np.asarray(labels, dtype=np.int32)}
    )
    decode = _decode_function(size, tolerate_errors=False)
    if cache:  # decode once, then shuffle the decoded images
        dataset = dataset.map(decode, num_parallel_calls=tf.data.AUTOTUNE).cache()
    if shuffle:
        dataset = dataset.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    if not cache:
        dataset = dataset.map(decode, num_parallel_calls=tf.data.AUTOTUNE)

    target_rows = tf.constant(np.eye(num_classes) if targets is None else targets, tf.float32)

    def finish(batch):
        images = batch["image"] if augment is None else augment(batch["image"])
        return normalize(images), tf.gather(target_rows, batch["label"])

    dataset = dataset.batch(batch_size).map(finish, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def prediction_dataset(
    paths: Sequence[str | Path], size: Sequence[int], batch_size: int
) -> tf.data.Dataset:
    """Unlabelled tf.data pipeline in file order, for prediction: a bad file does not stop it.

    Yields:
        ``(images, ok, index)``: (B, H, W, 3) float32; (B,) bool, False for an
        unreadable file (its image is all zero); (B,) int64 position in
        ``paths``, so that the caller names the file and decides what to do.
    """
    dataset = tf.data.Dataset.from_tensor_slices(
        {"path": [str(p) for p in paths], "index": np.arange(len(paths), dtype=np.int64)}
    )
    dataset = dataset.map(_decode_function(size, tolerate_errors=True), tf.data.AUTOTUNE)

    def finish(batch):
        return normalize(batch["image"]), batch["ok"], batch["index"]

    dataset = dataset.batch(batch_size).map(finish, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)
