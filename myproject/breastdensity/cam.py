"""Class activation maps: a compiled, batched Grad-CAM and the images made from maps.

Grad-CAM (Selvaraju et al., 2017). For a class c with (pre-softmax) score y_c and
the K feature maps A^k of a convolutional layer::

    alpha_k^c = mean over pixels (i, j) of  d y_c / d A^k_ij        (one weight per map)
    L^c       = ReLU( sum_k alpha_k^c A^k )                          (h x w map)

then L^c is resized to the input and scaled to [0, 1]. The score is taken
*before* the softmax (the last layer without its softmax, ``score_model``): the
softmax couples the classes, so its gradient for class c also depends on how
the other classes score and can vanish when p_c is close to 1.

Target layer: the one the model names, ``backbones.explain_layer_name(model)``
(read from the model, so any backbone works). In the reference ResNet it is
``LAST_RESIDUAL_LAYER``, the output of the last residual module (the network's
last and most semantic feature maps, H/32 x W/32 x 256); the other backbones
name theirs ``backbones.EXPLAIN_LAYER`` ("explain_here": EfficientNet's last
feature maps, a ViT's grid of patch tokens). From the ResNet's layer to the score
there are only dropout, global average pooling and the dense layer, so one map
costs about one forward pass. ``GradCam(model)`` compiles it once for a model (for any batch size; a second ``GradCam`` of the same model
reuses the compiled function) and then maps a batch per call; a test checks it
equals tf-keras-vis' ``Gradcam`` (which rebuilds a model at every call and runs
eagerly, about 4x slower here). ClassActivationMaps.ipynb writes the same
computation out in a few eager lines and checks it against this one.

The density map. A class's map answers "what argues for *this* class": for a
fatty breast (A) that is the fat, so class maps of A and B sit on fat and
cannot be checked against the dense tissue. The density map explains the
*ordinal density score* instead, the class scores weighted by their rank
(``DENSITY_WEIGHTS``: -1.5 A, -0.5 B, +0.5 C, +1.5 D), i.e. "what makes this
breast look denser", the same question for every image; in the ResNet it is
taken one stage earlier (``network.DENSITY_MAP_LAYER``, H/16 x W/16), where the
maps are twice as fine; other backbones have no such layer and use the layer they
explain (``density_map_layer``).
``GradCam(model, density_map_layer(model))(images, weights=DENSITY_WEIGHTS)``.
"""

from __future__ import annotations

import logging
import re
import weakref
from dataclasses import dataclass
from pathlib import Path

import cv2
import keras
import matplotlib.pyplot as plt
import numpy as np
import tensorflow as tf
from keras import ops
from scipy.ndimage import zoom

from .backbones import explain_layer_name
from .conventions import CLASSES
from .network import DENSITY_MAP_LAYER

EPSILON = 1e-7  # keras.backend.epsilon(), as tf-keras-vis' normalisation uses
# Class weights of the ordinal density score (centred ranks of A, B, C, D).
DENSITY_WEIGHTS = np.array([-1.5, -0.5, 0.5, 1.5], np.float32)


def density_map_layer(model: keras.Model) -> str:
    """The layer the density map weighs: ``DENSITY_MAP_LAYER`` in the reference ResNet, else
    the layer the model names for explanations.

    What makes the density map is its target, the ordinal density score, not its layer: the
    ResNet's one-stage-earlier layer only makes it twice as fine. Other backbones have no
    layer of that name (and no single "stage before" to name), so their density map weighs
    the layer every other map of theirs weighs, at its resolution.
    """
    names = {layer.name for layer in model.layers}
    return DENSITY_MAP_LAYER if DENSITY_MAP_LAYER in names else explain_layer_name(model)


def linear_copy(model: keras.Model) -> keras.Model:
    """A copy of ``model`` whose last activation (softmax) is linear; the original is untouched."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    copy.layers[-1].activation = keras.activations.linear
    return copy


class ClassScores(keras.layers.Layer):
    """A softmax ``Dense`` layer without its softmax: ``x @ kernel + bias``, with that layer's weights."""

    def __init__(self, dense: keras.layers.Dense, **kwargs):
        super().__init__(dtype="float32", **kwargs)
        self.dense = dense  # shared, not copied

    def call(self, inputs):
        return ops.matmul(ops.cast(inputs, "float32"), self.dense.kernel) + self.dense.bias


def scores_layer(model: keras.Model) -> keras.layers.Layer:
    """A layer that stands in for ``model``'s last one and gives the pre-softmax class scores.

    The last layer is a softmax ``Dense`` layer (this project's networks: its
    weights, shared) or a ``Softmax`` layer after the scores (then: identity).
    """
    last = model.layers[-1]
    if isinstance(last, keras.layers.Softmax):
        return keras.layers.Identity(name=f"{last.name}_scores")
    if isinstance(last, keras.layers.Dense) and last.activation is keras.activations.softmax:
        return ClassScores(last, name=f"{last.name}_scores")
    raise ValueError(
        f"{model.name}: the last layer must be a softmax Dense or a Softmax layer, "
        f"not {type(last).__name__}"
    )


def score_model(model: keras.Model, layer_name: str | None = None) -> keras.Model:
    """The pre-softmax class scores of ``model`` (after the output of ``layer_name``, if given).

    Unlike ``linear_copy`` nothing is copied: the returned model calls ``model``'s
    own layers, so it costs no clone and always uses the current weights.
    """
    scores = scores_layer(model)(model.layers[-1].input)
    if layer_name is None:
        return keras.Model(model.input, scores)
    return keras.Model(model.input, [model.get_layer(layer_name).output, scores])


# The compiled functions of each model, built on first use: a new GradCam or
# Explainer of the same model reuses them instead of tracing again.
_COMPILED = weakref.WeakKeyDictionary()


class _OneTracePerModel(logging.Filter):
    """Drops TensorFlow's retracing advice about these per-model compiled functions, only.

    TensorFlow counts traces per Python code object, so the function compiled for a
    second, third ... model (a new closure of the same code) looks to it like a retrace
    of one function; after five it prints a paragraph advising to define the function
    outside the loop. Each model's function is traced once (one input signature, any
    batch size), so the advice does not apply; any other retracing still shows.
    """

    NAMES = ("_compiled_gradcam", "_compiled_attribution")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "triggered tf.function retracing" not in message or not any(
            f"{name}.<locals>" in message for name in self.NAMES
        )


_ONE_TRACE_PER_MODEL = _OneTracePerModel()


def compiled_for(model: keras.Model, key, build):
    """``build()`` (a ``tf.function``) for ``model``, made once per model and ``key``."""
    tf.get_logger().addFilter(_ONE_TRACE_PER_MODEL)  # once: a logger holds a filter once
    functions = _COMPILED.setdefault(model, {})
    if key not in functions:
        functions[key] = build()
    return functions[key]


def input_spec(model: keras.Model) -> tf.TensorSpec:
    """(None, H, W, C) float32: any batch of the model's input, one trace for every batch size."""
    return tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)


def normalize_maps(maps: np.ndarray) -> np.ndarray:
    """Scale each map of a batch to [0, 1] (tf-keras-vis' ``normalize``)."""
    axes = tuple(range(1, maps.ndim))
    low = maps.min(axis=axes, keepdims=True)
    high = maps.max(axis=axes, keepdims=True)
    return (maps - low) / (high - low + EPSILON)


def expand_maps(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(B, h, w) -> (B, H, W), bilinear, as tf-keras-vis expands its maps (scipy zoom, order 1)."""
    factors = (1.0, size[0] / maps.shape[1], size[1] / maps.shape[2])
    return zoom(maps, factors, order=1)


@dataclass
class CamResult:
    maps: np.ndarray  # (B, H, W) in [0, 1] at the network input size
    raw: np.ndarray  # (B, h, w) before resizing and scaling
    classes: np.ndarray  # (B,) class each map explains
    probabilities: np.ndarray  # (B, 4) softmax of the model
    valid: np.ndarray  # (B,) False: the map is empty (vanishing gradients) or not finite


def _compiled_gradcam(model: keras.Model, layer_name: str):
    """(images, classes, weights) -> (B, h, w) maps, explained classes, probabilities."""
    feature_model = score_model(model, layer_name)  # (B, h, w, K) features, (B, 4) scores

    @tf.function(
        input_signature=[
            input_spec(model),
            tf.TensorSpec((None,), tf.int32),  # class, -1: the predicted one
            tf.TensorSpec((None, None), tf.float32),  # class weights, NaN: one class
        ]
    )
    def compute(images, classes, weights):
        with tf.GradientTape() as tape:
            features, scores = feature_model(images, training=False)
            scores = tf.cast(scores, tf.float32)  # float32 even under mixed precision
            chosen = tf.where(
                classes < 0, tf.argmax(scores, axis=-1, output_type=tf.int32), classes
            )
            # one class (one-hot weights) or a weighted sum of the class scores
            weights = tf.where(
                tf.reduce_any(tf.math.is_nan(weights), axis=-1, keepdims=True),
                tf.one_hot(chosen, tf.shape(scores)[-1]),
                weights,
            )
            target = tf.reduce_sum(scores * weights, axis=-1)
        gradients = tf.cast(tape.gradient(target, features), tf.float32)
        features = tf.cast(features, tf.float32)
        alphas = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)  # alpha_k^c
        cams = tf.nn.relu(tf.reduce_sum(features * alphas, axis=-1))  # (B, h, w)
        return cams, chosen, tf.nn.softmax(scores)

    return compute


class GradCam:
    """Batched Grad-CAM for one model, compiled once and reused for every batch.

    ``GradCam(model)(images, classes)``:

    Args (of the call):
        images: (B, H, W, 3) float32, preprocessed by ``breastdensity.preprocessing``.
        classes: (B,) class indices to explain; None explains the predicted class.
        expand: resize the maps to the input size (else the raw h x w maps).
        weights: (4,) or (B, 4) class weights: explain the weighted sum of the
            class scores instead of one class (``DENSITY_WEIGHTS``: the density
            map); not together with ``classes``.

    Returns:
        CamResult with ``maps`` (B, H, W) in [0, 1] (all zero and ``valid``
        False when the gradients vanish), the explained classes (the predicted
        ones when ``weights`` is given) and the model's probabilities. The
        model itself is not modified.

    Args (of the constructor):
        model: the classifier (softmax output).
        layer_name: the (None, h, w, K) layer to weigh; None: the one the model names
            (``backbones.explain_layer_name``).
    """

    def __init__(self, model: keras.Model, layer_name: str | None = None):
        layer_name = layer_name or explain_layer_name(model)
        self.layer_name = layer_name
        self.input_size = tuple(int(s) for s in model.input_shape[1:3])
        self._compute = compiled_for(
            model, ("gradcam", layer_name), lambda: _compiled_gradcam(model, layer_name)
        )

    def __call__(self, images, classes=None, expand: bool = True, weights=None) -> CamResult:
        images = tf.convert_to_tensor(images, tf.float32)
        batch = int(images.shape[0])
        if classes is not None and weights is not None:
            raise ValueError("give classes or weights, not both")
        if classes is None:
            classes = np.full(batch, -1, np.int32)  # -1: the predicted class
        classes = tf.convert_to_tensor(np.asarray(classes, np.int32).reshape(batch))
        if weights is None:
            weights = np.full((batch, len(CLASSES)), np.nan, np.float32)  # NaN: one class
        weights = np.broadcast_to(np.asarray(weights, np.float32), (batch, len(CLASSES)))
        raw, chosen, probabilities = (
            t.numpy() for t in self._compute(images, classes, tf.convert_to_tensor(weights))
        )
        finite = np.isfinite(raw).all(axis=(1, 2))
        valid = finite & (np.nan_to_num(raw).max(axis=(1, 2)) > EPSILON)
        raw = np.where(np.isfinite(raw), raw, 0.0)
        maps = expand_maps(raw, self.input_size) if expand else raw
        maps = normalize_maps(maps) * valid[:, None, None]  # empty maps stay all zero
        return CamResult(maps.astype(np.float32), raw, chosen, probabilities, valid)


def class_maps_on_one_scale(grad_cam: GradCam, image) -> np.ndarray:
    """Grad-CAM of every class for one image, all divided by the largest value of the four.

    ``GradCam`` scales each map to its own maximum, which makes the weakest
    argument for a class look as strong as the best one. Here the four maps
    share one scale, so they can be compared side by side.

    Args:
        grad_cam: ``GradCam`` of the model.
        image: (1, H, W, 3) preprocessed input.

    Returns:
        (NUM_CLASSES, H, W) float32 in [0, 1]; all zero if every map is empty.
    """
    images = np.repeat(np.asarray(image, np.float32), len(CLASSES), axis=0)
    raw = grad_cam(images, np.arange(len(CLASSES)), expand=False).raw  # (4, h, w), ReLU'd
    maps = expand_maps(raw, grad_cam.input_size)
    peak = float(maps.max())
    return (maps / peak if peak > EPSILON else np.zeros_like(maps)).astype(np.float32)


# ----------------------------------------------------------------------------
# Pictures made from a map
# ----------------------------------------------------------------------------


def to_image_size(cam: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A map computed on the squashed square input -> the original image's (height, width).

    The network saw the image resized without keeping its aspect ratio, so
    stretching the map back the same way puts every value over the pixel it
    came from.
    """
    return cv2.resize(cam.astype(np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)


def peak_inside_breast(cam: np.ndarray, gray: np.ndarray) -> bool:
    """Whether a map's maximum, stretched back onto the original image, lies on the breast.

    Args:
        cam: (S, S) map on the network input.
        gray: (H, W) original image; the breast is every pixel above 0 (the
            background is exactly 0 after preprocessing, pectoral included).

    Returns:
        True if the brightest map pixel falls on a breast pixel.
    """
    stretched = to_image_size(cam, gray.shape)
    row, column = np.unravel_index(int(np.argmax(stretched)), stretched.shape)
    return bool(gray[row, column] > 0)


def colorize(cam: np.ndarray, colormap: int = cv2.COLORMAP_JET) -> np.ndarray:
    """[0, 1] map -> uint8 BGR colour image (OpenCV order, ready for cv2.imwrite)."""
    return cv2.applyColorMap(np.uint8(np.clip(cam, 0, 1) * 255), colormap)


def overlay(gray: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Alpha-blend the colour map on the gray image, weighted by the map itself.

    ``out = gray * (1 - alpha * m) + colour(m) * alpha * m``: where the map is
    low the mammogram shows through unchanged, where it is high the colour
    takes ``alpha`` of the pixel. Nothing is added at full weight, so the
    breast is never saturated to white (the reference added both images).

    Args:
        gray: uint8 (H, W) image.
        cam: map in [0, 1] of the same (H, W) (see ``to_image_size``).
        alpha: largest weight of the colour.

    Returns:
        uint8 (H, W, 3) BGR image.
    """
    if gray.shape != cam.shape:
        raise ValueError(f"image {gray.shape} and map {cam.shape} differ in size")
    weight = alpha * np.clip(cam, 0, 1)[:, :, None]
    base = np.repeat(gray[:, :, None].astype(np.float32), 3, axis=2)
    blended = base * (1 - weight) + colorize(cam).astype(np.float32) * weight
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def active_region(cam: np.ndarray, level: float = 0.5) -> np.ndarray:
    """Pixels whose value is at least ``level`` times the map's maximum."""
    if not 0 < level <= 1:
        raise ValueError("level must be in (0, 1]")
    peak = float(cam.max())
    if peak <= 0:
        return np.zeros(cam.shape, bool)
    return cam >= level * peak


def draw_contours(
    gray: np.ndarray, cam: np.ndarray, level: float = 0.5, colour=(0, 255, 255)
) -> np.ndarray:
    """The outline of the most active region (``active_region``) drawn on the gray image (BGR)."""
    region = active_region(cam, level).astype(np.uint8)
    contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    picture = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    thickness = max(1, round(max(gray.shape) / 300))
    cv2.drawContours(picture, contours, -1, colour, thickness, lineType=cv2.LINE_AA)
    return picture


def viewable(preprocessed: np.ndarray) -> np.ndarray:
    """A preprocessed network input (H, W, 3) float -> uint8 gray for viewing (min-max scaled)."""
    channel = preprocessed[..., 0]
    low, high = float(channel.min()), float(channel.max())
    if high - low < 1e-12:
        return np.zeros(channel.shape, np.uint8)
    return np.uint8(np.round((channel - low) / (high - low) * 255))


# ----------------------------------------------------------------------------
# The four files of stage 4, per image
# ----------------------------------------------------------------------------


def cam_file_names(predicted: str, stem: str, size: int) -> dict[str, str]:
    """File names of stage 4, e.g. ``A_1251_1_A_CC_R_650.png`` (the reference's convention).

    The prefix is the *predicted* class, which changes with the model: files
    of one image under another prefix are stale and ``write_cam_images``
    removes them.
    """
    return {
        "input": f"{predicted}_{stem}_{size}.png",
        "map": f"{predicted}_{stem}_map.png",
        "overlay": f"{predicted}_{stem}_overlay.png",
        "contours": f"{predicted}_{stem}_contours.png",
        "methods": f"{predicted}_{stem}_methods.png",  # the method-comparison grid
    }


def _write_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image):
        raise OSError(f"cannot write {path}")


def _write_figure(path: Path, picture: np.ndarray, title: str, colorbar: str | None) -> None:
    """A BGR picture as a titled figure, with the jet colour bar of the map when it shows one."""
    height, width = picture.shape[:2]
    # small: 80 of these per projection are shipped (about 40 kB each)
    figure, axis = plt.subplots(figsize=(3.4, 3.4 * height / width + 0.7), layout="constrained")
    axis.imshow(cv2.cvtColor(picture, cv2.COLOR_BGR2RGB))
    axis.set_title(title, fontsize=8)
    axis.axis("off")
    if colorbar:
        scale = plt.cm.ScalarMappable(norm=plt.Normalize(0, 1), cmap="jet")
        figure.colorbar(scale, ax=axis, shrink=0.8, label=colorbar)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)
    plt.close(figure)


def write_cam_images(
    folder,
    stem: str,
    predicted: str,
    gray: np.ndarray,
    network_input: np.ndarray,
    cam: np.ndarray,
    alpha: float = 0.5,
    level: float = 0.5,
    title: str | None = None,
) -> dict[str, object]:
    """Write the four pictures of one image into ``folder``.

    The network input is written as the image itself; the map, the overlay and
    the contours as small figures with ``title`` and (map, overlay) a colour bar.

    Args:
        folder: ``<maps_dir>/<PROJ>/<CLASS>``.
        stem: the image file name without extension.
        predicted: predicted class letter (file-name prefix).
        gray: the original image, uint8 (H, W).
        network_input: the preprocessed (S, S, 3) input the network saw.
        cam: the [0, 1] map at the network input size (S, S).
        alpha, level: overlay weight and contour level (fraction of the maximum).
        title: what the figures say, e.g. "CC_R te0001_C_CC_R: true C, predicted C (0.93)".

    Returns:
        name -> path of the files written.
    """
    folder = Path(folder)
    title = title or f"{stem}: predicted {predicted}"
    names = cam_file_names(predicted, stem, network_input.shape[0])
    # Maps of this image written under another predicted class (another model,
    # another run) would otherwise stay beside the new ones.
    others = "|".join(c for c in CLASSES if c != predicted)
    stale = re.compile(rf"({others})_{re.escape(stem)}_(\d+|map|overlay|contours|methods)\.png")
    for path in folder.glob("*.png") if folder.is_dir() else []:
        if stale.fullmatch(path.name):
            path.unlink()
    stretched = to_image_size(cam, gray.shape)  # back to the real aspect ratio
    paths = {key: folder / name for key, name in names.items() if key != "methods"}
    _write_png(paths["input"], viewable(network_input))
    scale = f"Grad-CAM of {predicted} (1 = this map's maximum)"
    _write_figure(paths["map"], colorize(stretched), title, scale)
    _write_figure(paths["overlay"], overlay(gray, stretched, alpha), title, scale)
    _write_figure(
        paths["contours"],
        draw_contours(gray, stretched, level),
        f"{title}\nyellow: Grad-CAM >= {level:.0%} of its maximum",
        None,
    )
    return paths
