"""Gradient attributions, batched and compiled: the one engine behind every gradient method.

Every method here is one formula with different sample points. For an image x
(network input, (H, W, 3)), a class score y (pre-softmax) and K samples
(reference b_k, path position a_k)::

    A(x) = 1/K sum_k  (x - b_k) * R(b_k + a_k (x - b_k))     over the 3 channels

where R is the backward rule (the gradient d y / d x, or the deconvnet rule)
and the factor (x - b_k) is dropped for the plain-gradient methods. The three
channels hold the same gray image, so the map is their sum (the attribution of
the gray pixel), or, for saliency as tf-keras-vis computes it, the largest
|channel|:

=====================  ================  ==================================  ===
method                 rule, factor      samples (b_k, a_k)                  K
=====================  ================  ==================================  ===
saliency               gradient, none    (0, 1), largest |channel|           1
backprop (BP)          gradient, none    (0, 1): the gradient at x           1
deconvolution (D)      deconvnet, none   (0, 1)                              1
gradient_input (G*I)   gradient, x       (0, 1)                              1
integrated_gradients   gradient, x       (0, k/m), k = 1..m                  m
ig_black (IGB)         gradient, x - b   (black, (k - 1/2)/m), k = 1..m      m
ig_black_white (IGBW)  gradient, x - b   as IGB, from black and from white   2m
expected_gradients     gradient, x - b   (training image, a ~ U(0, 1))       n
=====================  ================  ==================================  ===

SmoothGrad wraps any of them: ``smoothgrad(method)`` averages A over noisy
copies x + e_j, ``smoothgrad_squared(method)`` averages A(x + e_j)^2
(``smoothgrad`` is SmoothGrad of saliency). Maps are absolute values (|A|,
|SG|, and SG^2, which is already >= 0), as the poster shows them.

**Options.** A method is a ``GradientMethod``: its reference (zero, black,
white, black and white, a reference image, training images), its path rule
(the gradient at x, or Integrated Gradients' path integral as a right or a
midpoint Riemann sum), its backward rule, its channel reduction and its
smoothing (none, SG, SG²). ``integrated_gradients(reference, rule)`` makes the
Integrated Gradients variants; pass a ``GradientMethod`` wherever a name is
accepted. The midpoint rule's error is O(1/m^2), the right sum's O(1/m); the
``integrated_gradients`` method keeps the right sum its published scores were
computed with.

**Speed.** All samples of all images of a call are rows of one stream, cut in
chunks of ``batch_size`` and sent through one compiled (``tf.function``)
forward+backward pass each, so a method with K samples costs about K / batch_size
batched gradient passes per image (``benchmarks/bench_attributions.py``). The
pass is compiled once per model and backward rule, for any number of rows, and
shared by every ``GradientAttributions`` of that model.

**Black and white.** Inputs are normalised per image (x / 255 minus the
image's own mean, ``preprocessing.normalize``), so pixel-space black (0) is
``-mean`` in the network's space and white (255) is ``1 - mean``. The mean is
not passed along with the input, but the darkest pixel of a mammogram is its
black background: black is taken as the image's minimum (exact whenever the
image has a 0 pixel, as every mammogram and phantom here does), white as
black + 1. Pass ``black=`` to override. The zero reference is an image equal
everywhere to its mean gray.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from itertools import islice
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from ..cam import compiled_for, input_spec, score_model, scores_layer
from ..conventions import is_image_file
from ..preprocessing import load_image

# ----------------------------------------------------------------------------
# The methods: which samples, which backward rule
# ----------------------------------------------------------------------------

REFERENCES = ("zero", "black", "white", "black_white", "image", "training")
PATHS = ("end", "right", "midpoint", "random")
RULES = ("gradient", "deconvnet")
CHANNELS = ("sum", "largest")
SMOOTHINGS = ("none", "SG", "SG²")


@dataclass(frozen=True)
class GradientMethod:
    """How one attribution method samples the network.

    Attributes:
        name: the name it is known by (``Explainer.explain``, tables).
        reference: b: "zero", "black", "white", "black_white" (both, half the
            samples each), "image" (``GradientAttributions(reference_image=)``)
            or "training" (Expected Gradients' baselines).
        path: "end" (a = 1: the gradient at the image itself), "right"
            (a = k/m) or "midpoint" (a = (k - 1/2)/m): Riemann sums of
            Integrated Gradients' path integral, or "random" (a ~ U(0, 1),
            with the training reference).
        times_input: multiply the gradient by (x - b).
        rule: "gradient" or "deconvnet".
        channels: "sum" (the gray pixel) or "largest" (max over the channels of |A|).
        smoothing: "none", "SG" (mean of A over noisy copies) or "SG²" (mean of A^2).
    """

    name: str
    reference: str = "zero"
    path: str = "end"
    times_input: bool = False
    rule: str = "gradient"
    channels: str = "sum"
    smoothing: str = "none"

    def __post_init__(self):
        for field, allowed in (
            ("reference", REFERENCES),
            ("path", PATHS),
            ("rule", RULES),
            ("channels", CHANNELS),
            ("smoothing", SMOOTHINGS),
        ):
            if getattr(self, field) not in allowed:
                raise ValueError(f"{self.name}: {field} must be one of {allowed}")
        if (self.path == "random") != (self.reference == "training"):
            raise ValueError(f"{self.name}: random path positions go with training references")


def integrated_gradients(
    reference: str = "black", rule: str = "midpoint", name: str | None = None
) -> GradientMethod:
    """Integrated Gradients (Sundararajan et al., 2017) from ``reference``, as a ``rule`` Riemann sum.

    Args:
        reference: "zero", "black", "white", "black_white" or "image".
        rule: "right" or "midpoint".
        name: default ``ig_<reference>`` (``ig_<reference>_right`` for the right sum).
    """
    if rule not in ("right", "midpoint"):
        raise ValueError("rule must be 'right' or 'midpoint'")
    name = name or f"ig_{reference}" + ("_right" if rule == "right" else "")
    return GradientMethod(name, reference, rule, times_input=True)


def smoothgrad(method: GradientMethod) -> GradientMethod:
    """SmoothGrad (Smilkov et al., 2017) of any gradient method: the mean of A over noisy copies."""
    return replace(method, name=f"sg_{method.name}", smoothing="SG")


def smoothgrad_squared(method: GradientMethod) -> GradientMethod:
    """SmoothGrad squared (Hooker et al., 2019): the mean of A^2 over noisy copies."""
    return replace(method, name=f"sg2_{method.name}", smoothing="SG²")


# The thesis' and the poster's methods, each also with SmoothGrad and SmoothGrad² (sg_, sg2_).
BASE_METHODS = {
    method.name: method
    for method in (
        GradientMethod("backprop"),
        GradientMethod("deconvolution", rule="deconvnet"),
        GradientMethod("gradient_input", times_input=True),
        integrated_gradients("black", "midpoint"),
        integrated_gradients("black_white", "midpoint"),
        GradientMethod("expected_gradients", "training", "random", times_input=True),
    )
}
GRADIENT_METHODS = tuple(BASE_METHODS) + tuple(
    f"{prefix}_{name}" for prefix in ("sg", "sg2") for name in BASE_METHODS
)
# The classic methods under their usual names (``Explainer``): saliency as tf-keras-vis
# computes it (largest |channel|), SmoothGrad of it, Integrated Gradients from zero.
SALIENCY = GradientMethod("saliency", channels="largest")
CLASSIC_METHODS = {
    method.name: method
    for method in (
        SALIENCY,
        replace(smoothgrad(SALIENCY), name="smoothgrad"),
        integrated_gradients("zero", "right", name="integrated_gradients"),
    )
}


# ----------------------------------------------------------------------------
# The deconvnet rule
# ----------------------------------------------------------------------------


def deconvnet_leaky_relu(inputs, negative_slope: float):
    """LeakyReLU forward, deconvnet rule backward (Zeiler and Fergus, 2014).

    Backpropagation sends the signal g back through an activation with the
    forward input's sign: ``g`` where x > 0, ``slope * g`` where x < 0. The
    deconvnet instead applies the activation itself to the *backward* signal,
    ignoring the forward input: ``leaky_relu(g) = g`` where g > 0,
    ``slope * g`` where g < 0. For a ReLU (slope 0) that keeps only positive
    signals, as Zeiler and Fergus' "rectified unpooling" does; with this
    network's LeakyReLU (slope 0.3) negative signals are damped, not removed,
    so the deconvnet map is closer to the gradient than with a ReLU. The two
    rules agree wherever the forward input and the backward signal have the
    same sign, and differ wherever they have opposite signs.
    """

    @tf.custom_gradient
    def forward(x):
        def backward(upstream):
            return tf.nn.leaky_relu(upstream, alpha=negative_slope)

        return tf.nn.leaky_relu(x, alpha=negative_slope), backward

    return forward(inputs)


class DeconvnetLeakyReLU(keras.layers.Layer):
    """Stands in for LeakyReLU/ReLU layers in the deconvnet copy of a model."""

    def __init__(self, negative_slope: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.negative_slope = float(negative_slope)

    def call(self, inputs):
        return deconvnet_leaky_relu(inputs, self.negative_slope)

    def get_config(self):
        return {**super().get_config(), "negative_slope": self.negative_slope}


def deconvnet_copy(model: keras.Model) -> keras.Model:
    """``model``'s pre-softmax scores, with its (Leaky)ReLU layers under the deconvnet backward rule.

    The forward pass is unchanged. Built from ``model``'s own layers (its
    weights are shared, not copied); ``model`` itself is untouched.
    """
    last = model.layers[-1]

    def clone(layer):
        if isinstance(layer, keras.layers.LeakyReLU):
            return DeconvnetLeakyReLU(layer.negative_slope, name=layer.name)
        if isinstance(layer, keras.layers.ReLU) and layer.max_value is None:
            return DeconvnetLeakyReLU(layer.negative_slope, name=layer.name)
        if layer is last:
            return scores_layer(model)
        return layer  # the same layer: same weights

    return keras.models.clone_model(model, clone_function=clone)


# ----------------------------------------------------------------------------
# Training images as Expected Gradients baselines
# ----------------------------------------------------------------------------


def load_baselines(folder, size, count: int = 32, seed: int = 0) -> np.ndarray:
    """``count`` images drawn (seeded) from a folder tree, preprocessed: (count, H, W, 3).

    Args:
        folder: e.g. ``TrainingSet/CC_R/train``; searched recursively.
        size: (height, width) of the network input.
        count: images to keep (all if fewer).
        seed: of the draw.
    """
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file() and is_image_file(p))
    if not files:
        raise FileNotFoundError(
            f"{folder}: no images for the Expected Gradients baselines; pass a folder of "
            "training images (e.g. TrainingSet/<PROJ>/train)"
        )
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(files), size=min(count, len(files)), replace=False))
    return np.stack([load_image(files[i], tuple(size)) for i in chosen]).astype(np.float32)


# ----------------------------------------------------------------------------
# The engine
# ----------------------------------------------------------------------------


def _compiled_attribution(model: keras.Model, rule: str):
    """One batched forward+backward pass: rows (points, factors, classes) -> (C, H, W)."""
    scores_model = score_model(model) if rule == "gradient" else deconvnet_copy(model)

    @tf.function(
        input_signature=[
            input_spec(model),  # points on the paths
            input_spec(model),  # factors: x - b, or ones
            tf.TensorSpec((None,), tf.int32),  # class of each row
            tf.TensorSpec((), tf.bool),  # largest |channel| instead of the sum
        ]
    )
    def attribution(points, factors, classes, largest_channel):
        with tf.GradientTape() as tape:
            tape.watch(points)
            scores = tf.cast(scores_model(points, training=False), tf.float32)
            target = tf.gather(scores, classes, batch_dims=1)
        values = tape.gradient(target, points) * factors  # (C, H, W, 3)
        return tf.where(
            largest_channel,
            tf.reduce_max(tf.abs(values), axis=-1),
            tf.reduce_sum(values, axis=-1),
        )

    return attribution


class GradientAttributions:
    """The methods of the table above for one model, compiled once and reused.

    Args:
        model: classifier with softmax output (not modified; its pre-softmax scores are explained).
        baselines: (N, H, W, 3) preprocessed training images for Expected Gradients.
        ig_steps: m, path points of Integrated Gradients (per reference).
        eg_samples: n, (baseline, position) draws of Expected Gradients.
        smooth_samples: SmoothGrad's noisy copies.
        smooth_noise: their standard deviation, as a fraction of the image's value range.
        batch_size: rows per compiled pass.
        seed: of the noise and of the EG draws; every image gets its own stream
            ``(seed, position in the batch, copy)``, so a call is reproducible.
        reference_image: (H, W, 3) preprocessed reference of methods with reference "image".
    """

    def __init__(
        self,
        model: keras.Model,
        baselines=None,
        ig_steps: int = 32,
        eg_samples: int = 32,
        smooth_samples: int = 20,
        smooth_noise: float = 0.2,
        batch_size: int = 32,
        seed: int = 0,
        reference_image=None,
    ):
        self.model = model
        self.baselines = None if baselines is None else np.asarray(baselines, np.float32)
        self.ig_steps = ig_steps
        self.eg_samples = eg_samples
        self.smooth_samples = smooth_samples
        self.smooth_noise = smooth_noise
        self.batch_size = batch_size
        self.seed = seed
        self.reference_image = (
            None if reference_image is None else np.asarray(reference_image, np.float32)
        )

    def _kernel(self, rule: str):
        return compiled_for(
            self.model, ("attribution", rule), lambda: _compiled_attribution(self.model, rule)
        )

    def method(self, name) -> GradientMethod:
        """The GradientMethod called ``name`` (``sg_`` / ``sg2_`` prefixes wrap a base method).

        A ``GradientMethod`` is returned as it is.
        """
        if isinstance(name, GradientMethod):
            return name
        for prefix, wrapper in (("sg2_", smoothgrad_squared), ("sg_", smoothgrad)):
            if name.startswith(prefix) and name[len(prefix) :] in BASE_METHODS:
                return wrapper(BASE_METHODS[name[len(prefix) :]])
        known = {**BASE_METHODS, **CLASSIC_METHODS}
        if name not in known:
            raise ValueError(
                f"unknown gradient method {name!r}; choose from "
                f"{', '.join([*CLASSIC_METHODS, *GRADIENT_METHODS])}"
            )
        return known[name]

    # --- the samples of one (image, noisy copy) -----------------------------------------

    def _samples(self, method: GradientMethod, black: float, rng) -> tuple[list, np.ndarray]:
        """References b_k (scalars or (H, W, 3) images) and path positions a_k of one image."""
        if method.reference == "training":
            if self.baselines is None:
                raise ValueError(
                    f"{method.name} needs training images as baselines: pass baselines= "
                    "(e.g. load_baselines('TrainingSet/CC_R/train', size))"
                )
            chosen = rng.integers(0, len(self.baselines), self.eg_samples)
            positions = rng.random(self.eg_samples).astype(np.float32)
            return [self.baselines[i] for i in chosen], positions
        if method.reference == "image" and self.reference_image is None:
            raise ValueError(f"{method.name} needs its reference: pass reference_image=")
        references = {
            "zero": [0.0],
            "black": [black],
            "white": [black + 1.0],
            "black_white": [black, black + 1.0],
            "image": [self.reference_image],
        }[method.reference]
        steps = np.arange(self.ig_steps, dtype=np.float32)
        positions = {
            "end": np.ones(1, np.float32),
            "right": (steps + 1.0) / self.ig_steps,
            "midpoint": (steps + 0.5) / self.ig_steps,
        }[method.path]
        return [r for r in references for _ in positions], np.tile(positions, len(references))

    def _rows(self, method: GradientMethod, images, classes, black):
        """Yield (image index, copy index, point, factor, class) for every sample of the call."""
        copies = self.smooth_samples if method.smoothing != "none" else 1
        for i, (image, target) in enumerate(zip(images, classes, strict=True)):
            sigma = self.smooth_noise * float(image.max() - image.min())
            for j in range(copies):
                rng = np.random.default_rng([self.seed, i, j])
                x = image
                if method.smoothing != "none":
                    # gray noise, the same in the 3 channels: the network sees a gray image
                    x = image + sigma * rng.normal(size=image.shape[:2] + (1,)).astype(np.float32)
                references, alphas = self._samples(method, float(black[i]), rng)
                for b, alpha in zip(references, alphas, strict=True):
                    point = b + alpha * (x - b)
                    factor = x - b if method.times_input else np.ones_like(x)
                    yield i, j, point, factor, int(target)

    def per_copy(self, name, images, classes, black=None) -> np.ndarray:
        """Signed attributions (B, copies, H, W): A(x + e_j) for each noisy copy j (1 copy if no noise).

        Args:
            name: a method of ``GRADIENT_METHODS`` or ``CLASSIC_METHODS``, or a ``GradientMethod``.
            images: (B, H, W, 3) preprocessed.
            classes: (B,) class explained in each image.
            black: (B,) pixel-space black in network units (default: each image's minimum).
        """
        method = self.method(name)
        images = np.asarray(images, np.float32)
        classes = np.asarray(classes, np.int32).reshape(len(images))
        black = images.min(axis=(1, 2, 3)) if black is None else np.asarray(black, np.float32)
        copies = self.smooth_samples if method.smoothing != "none" else 1
        sums = np.zeros((len(images), copies, *images.shape[1:3]), np.float64)
        counts = np.zeros((len(images), copies), np.int64)
        kernel = self._kernel(method.rule)
        largest = tf.constant(method.channels == "largest")
        rows = self._rows(method, images, classes, black)
        while chunk := list(islice(rows, self.batch_size)):
            index, copy, points, factors, targets = zip(*chunk, strict=True)
            values = kernel(
                tf.constant(np.stack(points)),
                tf.constant(np.stack(factors)),
                tf.constant(targets, tf.int32),
                largest,
            ).numpy()
            np.add.at(sums, (np.array(index), np.array(copy)), values)
            np.add.at(counts, (np.array(index), np.array(copy)), 1)
        return (sums / counts[..., None, None]).astype(np.float32)

    def maps(self, name, images, classes, black=None) -> np.ndarray:
        """(B, H, W) non-negative maps, not normalised: |A|, |mean_j A_j| (SG) or mean_j A_j^2 (SG²)."""
        values = self.per_copy(name, images, classes, black)
        if self.method(name).smoothing == "SG²":
            return np.mean(values**2, axis=1)
        return np.abs(values.mean(axis=1))

    def smoothed(self, name, images, classes, black=None) -> tuple[np.ndarray, np.ndarray]:
        """SG and SG² maps of base method ``name`` from the same noisy copies (half the cost)."""
        values = self.per_copy(smoothgrad(self.method(name)), images, classes, black)
        return np.abs(values.mean(axis=1)), np.mean(values**2, axis=1)


__all__ = [
    "BASE_METHODS",
    "CLASSIC_METHODS",
    "GRADIENT_METHODS",
    "SALIENCY",
    "DeconvnetLeakyReLU",
    "GradientAttributions",
    "GradientMethod",
    "deconvnet_copy",
    "deconvnet_leaky_relu",
    "integrated_gradients",
    "load_baselines",
    "smoothgrad",
    "smoothgrad_squared",
]
