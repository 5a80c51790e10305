"""Explanation methods behind one interface: ``explain(method, images, classes) -> maps``.

Every method returns (B, H, W) maps in [0, 1] at the network input size, for
the given classes (or the predicted ones), so they can be compared and scored
the same way.

================  ==========================================================
method            what it is (library)
================  ==========================================================
gradcam           Grad-CAM on the layer the model names for explanations
                  (the ResNet's last residual module, a ViT's patch tokens;
                  ``breastdensity.cam``, equal to tf-keras-vis' Gradcam,
                  compiled and batched)
density_gradcam   the density map: Grad-CAM of the ordinal density score
                  (class scores weighted -1.5, -0.5, 0.5, 1.5), in the ResNet
                  one stage earlier (``cam.density_map_layer``); ignores
                  ``classes``
gradcam++         Grad-CAM++: higher-order weights (tf-keras-vis)
scorecam          Faster Score-CAM: masks the input with the ``max_channels``
                  strongest feature maps, weights them by the class
                  probability they keep (tf-keras-vis)
layercam          Layer-CAM: pixel-wise positive-gradient weights (tf-keras-vis)
saliency          vanilla gradient |d y_c / d x|, its largest channel (as
                  tf-keras-vis' Saliency)
smoothgrad        saliency averaged over noisy copies of the image
integrated_gradients  path integral of the gradients from the zero
                  baseline (the image's mean gray), right Riemann sum of
                  ``ig_steps`` points
occlusion         drop of the class probability when a patch is hidden
                  (written here: no maintained TF 2.21 library offers it)
backprop, deconvolution, gradient_input, ig_black, ig_black_white,
expected_gradients, and sg_<m> / sg2_<m> (SmoothGrad and SmoothGrad
squared of any of them): the thesis' and the poster's gradient
                  attributions; backprop is the gradient of the gray
                  pixel (sum over the 3 channels), where saliency takes
                  the largest channel
rollout           a ViT only: attention rollout (``explain.transformer``),
                  class-agnostic; ignores ``classes``
chefer            a ViT only: Chefer et al.'s gradient-weighted attention
                  relevance (``explain.transformer``)
random            uniform noise: the floor every method must beat
================  ==========================================================

Every method but ``rollout`` and ``chefer`` runs on any backbone: the CAM methods
weigh the layer the model names (``backbones.explain_layer_name``), the others need
only the input and the scores. ``Explainer.supports(method)`` says whether a method
applies to the model. On a ViT, ``gradcam`` already is the transformer's token
Grad-CAM (same layer, same formula as ``TransformerExplainer.grad_cam``), so it is
not listed twice.

Every gradient method (saliency, smoothgrad, integrated_gradients and the
thesis' and poster's) is computed by one batched, compiled engine,
``breastdensity.explain.attributions``, where their variants are options (reference,
Riemann rule, smoothing).

The gradient methods use the pre-softmax score (see ``breastdensity.cam``);
Score-CAM and occlusion use the softmax probability, as their papers do.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import keras
import matplotlib.pyplot as plt
import numpy as np
from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
from tf_keras_vis.layercam import Layercam
from tf_keras_vis.scorecam import Scorecam
from tf_keras_vis.utils.scores import CategoricalScore

from ..backbones import explain_layer_name
from ..cam import (
    DENSITY_WEIGHTS,
    GradCam,
    density_map_layer,
    normalize_maps,
    overlay,
    score_model,
    to_image_size,
)
from .attributions import CLASSIC_METHODS, GRADIENT_METHODS, GradientAttributions
from .transformer import explainer_for

# The maps only a transformer has: they read its attention probabilities.
TRANSFORMER_METHODS = ("rollout", "chefer")

METHODS = (
    "gradcam",
    "density_gradcam",
    "gradcam++",
    "scorecam",
    "layercam",
    "saliency",
    "smoothgrad",
    "integrated_gradients",
    "occlusion",
    *GRADIENT_METHODS,
    *TRANSFORMER_METHODS,
    "random",
)
SLOW_METHODS = (
    "scorecam",
    "smoothgrad",
    "integrated_gradients",
    "occlusion",
    *(m for m in GRADIENT_METHODS if m.startswith(("ig_", "expected_", "sg_", "sg2_"))),
)
# The methods the evaluation notebook scores by default; the poster's gradient
# attributions have their own comparison (``comparison``). The
# density map explains another score than the class, so it is scored apart
# (``tools/measure_goals.py``); ask for it with methods=[..., "density_gradcam"].
SCORED_METHODS = tuple(m for m in METHODS if m not in (*GRADIENT_METHODS, "density_gradcam"))
# How people write the methods' names (figures, tables).
_GRADIENT_NAMES = {
    "backprop": "Backpropagation",
    "deconvolution": "Deconvolution",
    "gradient_input": "Gradient*Input",
    "ig_black": "IG, black reference",
    "ig_black_white": "IG, black and white",
    "expected_gradients": "Expected Gradients",
}
METHOD_NAMES = {
    "gradcam": "Grad-CAM",
    "density_gradcam": "Density map (Grad-CAM)",
    "gradcam++": "Grad-CAM++",
    "scorecam": "Score-CAM",
    "layercam": "Layer-CAM",
    "saliency": "Saliency",
    "smoothgrad": "SmoothGrad",
    "integrated_gradients": "Integrated Gradients",
    "occlusion": "Occlusion",
    "rollout": "Attention rollout",
    "chefer": "Chefer relevance",
    **_GRADIENT_NAMES,
    **{f"sg_{m}": f"SmoothGrad of {name}" for m, name in _GRADIENT_NAMES.items()},
    **{f"sg2_{m}": f"SmoothGrad² of {name}" for m, name in _GRADIENT_NAMES.items()},
    "random": "Random map",
}


class ScoreCamModel(keras.Model):
    """A model as tf-keras-vis' Score-CAM uses it: inputs as a list, ``predict`` without progress bar.

    Score-CAM calls ``model.predict([images])``: with a single (not listed) input
    Keras warns about the structure at every call, and ``predict`` draws a
    progress bar per image.
    """

    def predict(self, x, **kwargs):
        return super().predict(x, **{**kwargs, "verbose": 0})


class Explainer:
    """All explanation methods for one model; library objects are built once and reused.

    Args:
        model: trained classifier with softmax output (not modified).
        layer_name: target layer of the CAM methods; None: the one the model names
            (``backbones.explain_layer_name``).
        score_cam_max_channels: Faster Score-CAM keeps this many feature maps.
        smooth_samples, smooth_noise: SmoothGrad's noisy copies and their
            noise level (fraction of the image's value range).
        ig_steps: Riemann steps of Integrated Gradients (every variant).
        occlusion_patch, occlusion_stride: patch side and step, as fractions
            of the image side.
        seed: of the random baseline and SmoothGrad's noise.
        baselines: (N, H, W, 3) preprocessed training images, the baselines of
            expected_gradients (``attributions.load_baselines``); None: that method is unavailable.
        eg_samples: (baseline, path position) draws of expected_gradients.
    """

    def __init__(
        self,
        model,
        layer_name: str | None = None,
        score_cam_max_channels: int = 16,
        smooth_samples: int = 20,
        smooth_noise: float = 0.2,
        ig_steps: int = 32,
        occlusion_patch: float = 0.125,
        occlusion_stride: float = 0.0625,
        seed: int = 0,
        baselines=None,
        eg_samples: int = 32,
    ):
        self.model = model
        self.layer_name = layer_name or explain_layer_name(model)
        self.is_transformer = any(
            isinstance(layer, keras.layers.MultiHeadAttention) for layer in model.layers
        )
        self.size = tuple(int(s) for s in model.input_shape[1:3])
        self.score_cam_max_channels = score_cam_max_channels
        self.smooth_samples = smooth_samples
        self.smooth_noise = smooth_noise
        self.ig_steps = ig_steps
        self.occlusion_patch = occlusion_patch
        self.occlusion_stride = occlusion_stride
        self.seed = seed
        # One stream for the random baseline: every call draws a new, independent map
        # (a fixed map would look perfectly "robust" and "stable").
        self._random = np.random.default_rng(seed)
        self._gradcam = GradCam(model, self.layer_name)
        self._library = {}
        self.attributions = GradientAttributions(
            model,
            baselines,
            ig_steps=ig_steps,
            eg_samples=eg_samples,
            smooth_samples=smooth_samples,
            smooth_noise=smooth_noise,
            seed=seed,
        )

    # --- helpers ---------------------------------------------------------------------------

    def supports(self, method: str) -> bool:
        """Whether ``method`` applies to this model (the transformer methods need a ViT)."""
        return method not in TRANSFORMER_METHODS or self.is_transformer

    def predicted_classes(self, images) -> np.ndarray:
        return self.model.predict(images, verbose=0, batch_size=8).argmax(axis=1)

    def _vis(self, name):
        """tf-keras-vis objects, created on first use, on models built from this model's
        layers (no copy): the pre-softmax scores for Grad-CAM++ and Layer-CAM, the softmax
        for Score-CAM (``ScoreCamModel``)."""
        if name not in self._library:
            factories = {
                "gradcam++": lambda: GradcamPlusPlus(score_model(self.model), clone=False),
                "layercam": lambda: Layercam(score_model(self.model), clone=False),
                "scorecam": lambda: Scorecam(
                    ScoreCamModel([self.model.input], self.model.output), clone=False
                ),
            }
            self._library[name] = factories[name]()
        return self._library[name]

    # --- the interface -----------------------------------------------------------------------

    def explain(self, method: str, images, classes=None) -> np.ndarray:
        """Maps (B, H, W) in [0, 1] of ``method`` for ``classes`` (None: the predicted ones)."""
        images = np.asarray(images, np.float32)
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
        if not self.supports(method):
            raise ValueError(
                f"{method!r} reads a transformer's attention, and {self.model.name} has no "
                "MultiHeadAttention layer: use it with a ViT (backbones 'vit', 'vit-tiny')"
            )
        if method in ("density_gradcam", "rollout"):
            classes = np.full(len(images), -1)  # unused: these maps explain no class
        elif classes is None:
            classes = self.predicted_classes(images)  # (a forward pass)
        classes = np.asarray(classes, np.int32).reshape(len(images))
        score = CategoricalScore(classes.tolist())
        cam_options = {"penultimate_layer": self.layer_name, "seek_penultimate_conv_layer": False}
        if method == "gradcam":
            maps = self._gradcam(images, classes).maps
        elif method == "density_gradcam":
            layer = density_map_layer(self.model)
            maps = GradCam(self.model, layer)(images, weights=DENSITY_WEIGHTS).maps
        elif method == "rollout":
            maps = explainer_for(self.model).rollout(images).maps
        elif method == "chefer":
            maps = explainer_for(self.model).chefer(images, classes).maps
        elif method in ("gradcam++", "layercam"):
            maps = self._vis(method)(score, images, **cam_options)
        elif method == "scorecam":
            maps = self._vis(method)(
                score, images, max_N=self.score_cam_max_channels, **cam_options
            )
        elif method in (*CLASSIC_METHODS, *GRADIENT_METHODS):
            maps = self.attributions.maps(method, images, classes)
        elif method == "occlusion":
            maps = occlusion_sensitivity(
                self.model, images, classes, self.occlusion_patch, self.occlusion_stride
            )
        else:
            maps = self._random.random((len(images), *self.size))
        maps = np.nan_to_num(np.asarray(maps, np.float32).reshape(len(images), *self.size))
        return normalize_maps(maps).astype(np.float32)


def occlusion_sensitivity(model, images, classes, patch: float = 0.125, stride: float = 0.0625):
    """Occlusion sensitivity (Zeiler and Fergus, 2014).

    A square patch (side ``patch`` x image side) set to 0 — the image's mean gray
    after centring — slides with step ``stride``; each pixel gets the mean drop of
    the class probability over the patches that covered it (negative drops
    count as 0: hiding that patch made the class more likely).

    Returns:
        (B, H, W) probability drops.
    """
    images = np.asarray(images, np.float32)
    _, height, width, _ = images.shape
    side = max(1, round(patch * min(height, width)))
    step = max(1, round(stride * min(height, width)))
    rows = list(range(0, max(height - side, 0) + 1, step))
    cols = list(range(0, max(width - side, 0) + 1, step))
    if rows[-1] + side < height:
        rows.append(height - side)
    if cols[-1] + side < width:
        cols.append(width - side)
    positions = [(r, c) for r in rows for c in cols]
    maps = np.zeros(images.shape[:3], np.float32)
    for index, (image, target) in enumerate(zip(images, classes, strict=True)):
        reference = float(model.predict(image[None], verbose=0)[0, int(target)])
        drop_sum = np.zeros((height, width), np.float32)
        count = np.zeros((height, width), np.float32)
        for start in range(0, len(positions), 32):
            chunk = positions[start : start + 32]
            occluded = np.repeat(image[None], len(chunk), axis=0)
            for k, (r, c) in enumerate(chunk):
                occluded[k, r : r + side, c : c + side] = 0.0
            probabilities = model.predict(occluded, verbose=0, batch_size=32)[:, int(target)]
            for (r, c), probability in zip(chunk, probabilities, strict=True):
                drop_sum[r : r + side, c : c + side] += max(reference - float(probability), 0.0)
                count[r : r + side, c : c + side] += 1
        maps[index] = drop_sum / np.maximum(count, 1)
    return maps


__all__ = [
    "METHODS",
    "SLOW_METHODS",
    "TRANSFORMER_METHODS",
    "Explainer",
    "occlusion_sensitivity",
    "plot_method_grid",
]


def plot_method_grid(gray, maps: dict[str, np.ndarray], title: str, path=None, alpha: float = 0.5):
    """The image and its maps as overlays in a grid (four per row), with one shared colour bar.

    Every map is drawn on the same 0-1 colour scale; maps that should be compared
    with each other (the Grad-CAM of each class) must be scaled together by the
    caller (``cam.class_maps_on_one_scale``).

    Args:
        gray: uint8 (H, W) original image.
        maps: label (as people write it) -> [0, 1] map at the network input size.
        title: figure title.
        path: where to save the PNG (None: only return the figure).
    """
    panels = [("image", None), *maps.items()]
    columns = min(4, len(panels))
    rows = -(-len(panels) // columns)
    aspect = gray.shape[0] / gray.shape[1]
    figure, axes = plt.subplots(
        rows,
        columns,
        figsize=(2.6 * columns + 0.8, 2.6 * aspect * rows + 0.8),
        squeeze=False,
        layout="constrained",
    )
    for axis in axes.flat:
        axis.axis("off")
    for axis, (label, cam) in zip(axes.flat, panels, strict=False):
        if cam is None:
            axis.imshow(gray, cmap="gray", vmin=0, vmax=255)
        else:
            picture = overlay(gray, to_image_size(cam, gray.shape), alpha)
            axis.imshow(cv2.cvtColor(picture, cv2.COLOR_BGR2RGB))
        axis.set_title(label, fontsize=9)
    scale = plt.cm.ScalarMappable(norm=plt.Normalize(0, 1), cmap="jet")
    figure.colorbar(scale, ax=axes, shrink=0.6, label="map value (0-1)")
    figure.suptitle(title, fontsize=10)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=90)
    return figure
