"""Gradient attributions of the UNED thesis and the LaTIM poster, batched and compiled.

Every method here is one formula with different sample points. For an image x
(network input, (H, W, 3)), a class score y (pre-softmax) and K samples
(reference b_k, path position a_k)::

    A(x) = 1/K sum_k  (x - b_k) * R(b_k + a_k (x - b_k))     summed over the 3 channels

where R is the backward rule (the gradient d y / d x, or the deconvnet rule)
and the factor (x - b_k) is dropped for the plain-gradient methods:

=====================  ================  ==================================  ===
method                 rule, factor      samples (b_k, a_k)                  K
=====================  ================  ==================================  ===
backprop (BP)          gradient, none    (0, 1): the gradient at x           1
deconvolution (D)      deconvnet, none   (0, 1)                              1
gradient_input (G*I)   gradient, x       (0, 1)                              1
ig_black (IGB)         gradient, x - b   (black, (k - 1/2)/m), k = 1..m      m
ig_black_white (IGBW)  gradient, x - b   as IGB, from black and from white   2m
expected_gradients     gradient, x - b   (training image, a ~ U(0, 1))       n
=====================  ================  ==================================  ===

SmoothGrad wraps any of them: ``smoothgrad(method)`` averages A over noisy
copies x + e_j, ``smoothgrad_squared(method)`` averages A(x + e_j)^2. Maps
are absolute values (|A|, |SG|, and SG^2, which is already >= 0), as the poster
shows them.

**Speed.** All samples of all images of a call are rows of one stream, cut in
chunks of ``batch_size`` and sent through one compiled (``tf.function``)
forward+backward pass each, so a method with K samples costs about K / batch_size
batched gradient passes per image (``benchmarks/bench_attributions.py``).

**Black and white.** Inputs are normalised per image (x / 255 minus the
image's own mean, ``preprocessing.normalize``), so pixel-space black (0) is
``-mean`` in the network's space and white (255) is ``1 - mean``. The mean is
not passed along with the input, but the darkest pixel of a mammogram is its
black background: black is taken as the image's minimum (exact whenever the
image has a 0 pixel, as every mammogram and phantom here does), white as
black + 1. Pass ``black=`` to override.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from itertools import islice
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from .cam import linear_copy
from .conventions import is_image_file
from .preprocessing import load_image

# ----------------------------------------------------------------------------
# The methods: which samples, which backward rule
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class GradientMethod:
    """How one attribution method samples the network.

    Attributes:
        name: the name ``Explainer.explain`` knows it by.
        reference: "zero" (b = 0), "black", "black_white" or "training" (EG baselines).
        path: "end" (a = 1: the gradient at the image itself), "uniform"
            (a = (k - 1/2)/m, the midpoint rule for Integrated Gradients' path
            integral) or "random" (a ~ U(0, 1)).
        times_input: multiply the gradient by (x - b).
        rule: "gradient" or "deconvnet".
        noise_samples: SmoothGrad's noisy copies (0: none).
        squared: SmoothGrad squared (mean of A^2 over the copies) instead of mean of A.
    """

    name: str
    reference: str = "zero"
    path: str = "end"
    times_input: bool = False
    rule: str = "gradient"
    noise_samples: int = 0
    squared: bool = False


BASE_METHODS = {
    method.name: method
    for method in (
        GradientMethod("backprop"),
        GradientMethod("deconvolution", rule="deconvnet"),
        GradientMethod("gradient_input", times_input=True),
        GradientMethod("ig_black", "black", "uniform", True),
        GradientMethod("ig_black_white", "black_white", "uniform", True),
        GradientMethod("expected_gradients", "training", "random", True),
    )
}


def smoothgrad(method: GradientMethod, samples: int = 20) -> GradientMethod:
    """SmoothGrad (Smilkov et al., 2017) of any gradient method: the mean of A over noisy copies."""
    return replace(method, name=f"sg_{method.name}", noise_samples=samples, squared=False)


def smoothgrad_squared(method: GradientMethod, samples: int = 20) -> GradientMethod:
    """SmoothGrad squared (Hooker et al., 2019): the mean of A^2 over noisy copies."""
    return replace(method, name=f"sg2_{method.name}", noise_samples=samples, squared=True)


GRADIENT_METHODS = tuple(BASE_METHODS) + tuple(
    f"{prefix}_{name}" for prefix in ("sg", "sg2") for name in BASE_METHODS
)


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
    """A linear-output copy of ``model`` whose (Leaky)ReLU layers use the deconvnet backward rule.

    The forward pass is unchanged (same weights, same outputs); ``model`` itself is untouched.
    """

    def clone(layer):
        if isinstance(layer, keras.layers.LeakyReLU):
            return DeconvnetLeakyReLU(layer.negative_slope, name=layer.name)
        if isinstance(layer, keras.layers.ReLU) and layer.max_value is None:
            return DeconvnetLeakyReLU(layer.negative_slope, name=layer.name)
        return layer.__class__.from_config(layer.get_config())

    copy = keras.models.clone_model(linear_copy(model), clone_function=clone)
    copy.set_weights(model.get_weights())
    copy.layers[-1].activation = keras.activations.linear
    return copy


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


def _compiled_attribution(model: keras.Model):
    """One batched forward+backward pass: rows (points, factors, classes) -> (C, H, W)."""

    @tf.function(reduce_retracing=True)
    def attribution(points, factors, classes):
        with tf.GradientTape() as tape:
            tape.watch(points)
            scores = tf.cast(model(points, training=False), tf.float32)
            target = tf.gather(scores, classes, batch_dims=1)
        gradients = tape.gradient(target, points)
        return tf.reduce_sum(gradients * factors, axis=-1)

    return attribution


class GradientAttributions:
    """The methods of the table above for one model, compiled once and reused.

    Args:
        model: classifier with softmax output (not modified; a linear copy gives the scores).
        baselines: (N, H, W, 3) preprocessed training images for Expected Gradients.
        ig_steps: m, path points of IGB and IGBW (per reference).
        eg_samples: n, (baseline, position) draws of Expected Gradients.
        smooth_samples: SmoothGrad's noisy copies.
        smooth_noise: their standard deviation, as a fraction of the image's value range.
        batch_size: rows per compiled pass.
        seed: of the noise and of the EG draws; every image gets its own stream
            ``(seed, position in the batch, copy)``, so a call is reproducible.
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
    ):
        self.model = model
        self.baselines = None if baselines is None else np.asarray(baselines, np.float32)
        self.ig_steps = ig_steps
        self.eg_samples = eg_samples
        self.smooth_samples = smooth_samples
        self.smooth_noise = smooth_noise
        self.batch_size = batch_size
        self.seed = seed
        self._kernels = {}

    def _kernel(self, rule: str):
        if rule not in self._kernels:  # model copies are built on first use
            copy = linear_copy(self.model) if rule == "gradient" else deconvnet_copy(self.model)
            self._kernels[rule] = _compiled_attribution(copy)
        return self._kernels[rule]

    def method(self, name: str) -> GradientMethod:
        """The GradientMethod called ``name`` (``sg_`` / ``sg2_`` prefixes wrap a base method)."""
        for prefix, wrapper in (("sg2_", smoothgrad_squared), ("sg_", smoothgrad)):
            if name.startswith(prefix) and name[len(prefix) :] in BASE_METHODS:
                return wrapper(BASE_METHODS[name[len(prefix) :]], self.smooth_samples)
        if name not in BASE_METHODS:
            raise ValueError(f"unknown gradient method {name!r}; choose from {GRADIENT_METHODS}")
        return BASE_METHODS[name]

    # --- the samples of one (image, noisy copy) -----------------------------------------

    def _samples(self, method: GradientMethod, black: float, rng) -> tuple[list, np.ndarray]:
        """References (scalars or baseline indices) and path positions of one image's K samples."""
        if method.reference == "zero":
            return [0.0], np.ones(1, np.float32)
        if method.reference in ("black", "black_white"):
            # midpoint rule: error O(1/m^2), where the right Riemann sum has O(1/m)
            steps = (np.arange(self.ig_steps, dtype=np.float32) + 0.5) / self.ig_steps
            references = [black] + ([black + 1.0] if method.reference == "black_white" else [])
            return [r for r in references for _ in steps], np.tile(steps, len(references))
        if self.baselines is None:
            raise ValueError(
                "expected_gradients needs training images as baselines: pass baselines= "
                "(e.g. load_baselines('TrainingSet/CC_R/train', size))"
            )
        chosen = rng.integers(0, len(self.baselines), self.eg_samples)
        return [int(i) for i in chosen], rng.random(self.eg_samples).astype(np.float32)

    def _rows(self, method: GradientMethod, images, classes, black):
        """Yield (image index, copy index, point, factor, class) for every sample of the call."""
        copies = max(method.noise_samples, 1)
        for i, (image, target) in enumerate(zip(images, classes, strict=True)):
            sigma = self.smooth_noise * float(image.max() - image.min())
            for j in range(copies):
                rng = np.random.default_rng([self.seed, i, j])
                x = image
                if method.noise_samples:
                    # gray noise, the same in the 3 channels: the network sees a gray image
                    x = image + sigma * rng.normal(size=image.shape[:2] + (1,)).astype(np.float32)
                references, alphas = self._samples(method, float(black[i]), rng)
                for reference, alpha in zip(references, alphas, strict=True):
                    b = self.baselines[reference] if method.reference == "training" else reference
                    point = b + alpha * (x - b)
                    factor = x - b if method.times_input else np.ones_like(x)
                    yield i, j, point, factor, int(target)

    def per_copy(self, name: str, images, classes, black=None) -> np.ndarray:
        """Signed attributions (B, copies, H, W): A(x + e_j) for each noisy copy j (1 copy if no noise).

        Args:
            name: a method of ``GRADIENT_METHODS``.
            images: (B, H, W, 3) preprocessed.
            classes: (B,) class explained in each image.
            black: (B,) pixel-space black in network units (default: each image's minimum).
        """
        method = self.method(name)
        images = np.asarray(images, np.float32)
        classes = np.asarray(classes, np.int32).reshape(len(images))
        black = images.min(axis=(1, 2, 3)) if black is None else np.asarray(black, np.float32)
        copies = max(method.noise_samples, 1)
        sums = np.zeros((len(images), copies, *images.shape[1:3]), np.float64)
        counts = np.zeros((len(images), copies), np.int64)
        kernel = self._kernel(method.rule)
        rows = self._rows(method, images, classes, black)
        while chunk := list(islice(rows, self.batch_size)):
            index, copy, points, factors, targets = zip(*chunk, strict=True)
            values = kernel(
                tf.constant(np.stack(points)), tf.constant(np.stack(factors)), tf.constant(targets)
            ).numpy()
            np.add.at(sums, (np.array(index), np.array(copy)), values)
            np.add.at(counts, (np.array(index), np.array(copy)), 1)
        return (sums / counts[..., None, None]).astype(np.float32)

    def maps(self, name: str, images, classes, black=None) -> np.ndarray:
        """(B, H, W) non-negative maps, not normalised: |A|, |mean_j A_j| (SG) or mean_j A_j^2 (SG^2)."""
        values = self.per_copy(name, images, classes, black)
        if self.method(name).squared:
            return np.mean(values**2, axis=1)
        return np.abs(values.mean(axis=1))

    def smoothed(self, name: str, images, classes, black=None) -> tuple[np.ndarray, np.ndarray]:
        """SG and SG^2 maps of base method ``name`` from the same noisy copies (half the cost)."""
        values = self.per_copy(f"sg_{name}", images, classes, black)
        return np.abs(values.mean(axis=1)), np.mean(values**2, axis=1)


__all__ = [
    "BASE_METHODS",
    "GRADIENT_METHODS",
    "DeconvnetLeakyReLU",
    "GradientAttributions",
    "GradientMethod",
    "deconvnet_copy",
    "deconvnet_leaky_relu",
    "load_baselines",
    "smoothgrad",
    "smoothgrad_squared",
]
