"""Gradient attributions and region maps: known answers on tiny constructed models."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from breastdensity.cam import linear_copy
from breastdensity.explain.attributions import (
    GradientAttributions,
    GradientMethod,
    deconvnet_copy,
    integrated_gradients,
)
from breastdensity.explain.regions import segment_regions, xrai_map
from breastdensity.preprocessing import normalize

SIDE = 16


def gray_images(count, seed=0):
    """Normalised network inputs (count, SIDE, SIDE, 3) of gray images with a black background."""
    rng = np.random.default_rng(seed)
    gray = rng.uniform(20, 255, (count, SIDE, SIDE, 1)).astype(np.float32)
    gray[:, :, :3] = 0  # a black strip, as a mammogram's background
    return normalize(gray).numpy()


def smooth_model(seed=0):
    """A small nonlinear but smooth classifier (tanh), where Riemann sums converge fast."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIDE, SIDE, 3))
    x = keras.layers.Conv2D(4, 3, activation="tanh")(inputs)
    x = keras.layers.Conv2D(4, 3, strides=2, activation="tanh")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    scale = keras.initializers.RandomNormal(stddev=10.0)  # scores that differ between images
    return keras.Model(inputs, keras.layers.Dense(2, "softmax", kernel_initializer=scale)(x))


def linear_model(seed=0):
    """Softmax of an affine function of the pixels: its scores are exactly linear."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIDE, SIDE, 3))
    x = keras.layers.Flatten()(inputs)
    dense = keras.layers.Dense(2, activation="softmax", bias_initializer="random_normal")
    return keras.Model(inputs, dense(x))


def scores(model, images, classes):
    return linear_copy(model)(images).numpy()[np.arange(len(images)), classes]


@pytest.mark.parametrize("name", ["ig_black", "ig_black_white"])
def test_integrated_gradients_complete_within_one_percent(name):
    model, images, classes = smooth_model(), gray_images(3), np.array([0, 1, 1])
    attributions = GradientAttributions(model, ig_steps=64, batch_size=128)
    total = attributions.per_copy(name, images, classes)[:, 0].sum(axis=(1, 2))
    black = images.min(axis=(1, 2, 3), keepdims=True)
    reference = scores(model, np.broadcast_to(black, images.shape), classes)
    if name == "ig_black_white":  # mean of the two references
        white = scores(model, np.broadcast_to(black + 1.0, images.shape), classes)
        reference = (reference + white) / 2
    expected = scores(model, images, classes) - reference
    assert np.abs(expected).min() > 0.05  # a difference worth checking
    np.testing.assert_allclose(total, expected, rtol=0.01)


def test_black_is_pixel_zero_after_normalisation():
    images = gray_images(2)
    gray = np.random.default_rng(0).uniform(20, 255, (2, SIDE, SIDE, 1)).astype(np.float32)
    gray[:, :, :3] = 0
    means = (gray / 255).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(images.min(axis=(1, 2, 3)), -means, atol=1e-6)


def test_on_a_linear_model_integrated_gradients_is_gradient_times_input():
    model, images, classes = linear_model(), gray_images(2), np.array([1, 0])
    kernel = model.layers[-1].get_weights()[0].reshape(SIDE, SIDE, 3, 2)
    # the score's gradient is the class's column of weights, whatever the image
    expected = np.stack(
        [(x * kernel[..., c]).sum(axis=-1) for x, c in zip(images, classes, strict=True)]
    )
    attributions = GradientAttributions(model, ig_steps=8)
    for name in ("gradient_input", "integrated_gradients"):  # IG from zero, right sum
        values = attributions.per_copy(name, images, classes)[:, 0]
        np.testing.assert_allclose(values, expected, rtol=1e-4, atol=1e-6)
    # ... and from black set to 0, by either rule
    for rule in ("right", "midpoint"):
        from_black = integrated_gradients("black", rule)
        values = attributions.per_copy(from_black, images, classes, black=np.zeros(2))[:, 0]
        np.testing.assert_allclose(values, expected, rtol=1e-4, atol=1e-6)
    assert np.abs(expected).max() > 0


def test_references_and_riemann_rules():
    model, images, classes = smooth_model(), gray_images(2), np.array([0, 1])
    attributions = GradientAttributions(model, ig_steps=4, batch_size=64)
    black = images.min(axis=(1, 2, 3))
    # a reference image equal to black everywhere is the black reference
    attributions.reference_image = np.full(images.shape[1:], black[0], np.float32)
    np.testing.assert_allclose(
        attributions.per_copy(integrated_gradients("image"), images[:1], classes[:1]),
        attributions.per_copy("ig_black", images[:1], classes[:1]),
        rtol=1e-5,
        atol=1e-7,
    )
    # IGBW is the mean of IG from black and IG from white
    both = [
        attributions.per_copy(integrated_gradients(r), images, classes) for r in ("black", "white")
    ]
    np.testing.assert_allclose(
        attributions.per_copy("ig_black_white", images, classes),
        (both[0] + both[1]) / 2,
        rtol=1e-4,
        atol=1e-6,
    )
    # with few steps the midpoint rule is closer to completeness than the right sum
    expected = scores(model, images, classes) - scores(
        model, np.broadcast_to(black[:, None, None, None], images.shape), classes
    )
    errors = {}
    for rule in ("right", "midpoint"):
        total = attributions.per_copy(integrated_gradients("black", rule), images, classes)
        errors[rule] = np.abs(total[:, 0].sum(axis=(1, 2)) - expected)
    assert (errors["midpoint"] < errors["right"]).all()
    with pytest.raises(ValueError, match="reference must be one of"):
        GradientMethod("ig_grey", reference="grey")
    with pytest.raises(ValueError, match="reference_image="):
        GradientAttributions(model).maps(integrated_gradients("image"), images, classes)


def test_expected_gradients_with_one_baseline_image_is_integrated_gradients():
    images, classes = gray_images(2, seed=1), np.array([0, 1])
    black = images.min(axis=(1, 2, 3))
    # every baseline is the same image: the black of image 0 (and image 1 uses it too)
    baselines = np.full((5, *images.shape[1:]), black[0], np.float32)
    same_black = np.full(2, black[0])
    # a linear model: the gradient is constant on the path, EG == IG exactly
    linear = GradientAttributions(linear_model(), baselines, ig_steps=4, eg_samples=7)
    np.testing.assert_allclose(
        linear.per_copy("expected_gradients", images, classes),
        linear.per_copy("ig_black", images, classes, black=same_black),
        rtol=1e-4,
        atol=1e-6,
    )
    # a nonlinear model: random path positions estimate the same integral
    smooth = GradientAttributions(
        smooth_model(), baselines, ig_steps=256, eg_samples=512, batch_size=128
    )
    eg = smooth.per_copy("expected_gradients", images, classes)[:, 0]
    ig = smooth.per_copy("ig_black", images, classes, black=same_black)[:, 0]
    for a, b in zip(eg, ig, strict=True):
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99
        assert a.sum() == pytest.approx(b.sum(), rel=0.05)


def test_smoothgrad_squared_is_non_negative_and_smoothgrad_of_squares():
    model, images, classes = smooth_model(), gray_images(2), np.array([1, 0])
    attributions = GradientAttributions(model, smooth_samples=6, smooth_noise=0.2, seed=3)
    squared = attributions.maps("sg2_backprop", images, classes)
    smooth = attributions.maps("sg_backprop", images, classes)
    assert squared.min() >= 0
    # written out: noisy copies (the same draws), the plain gradient, squared, averaged
    linear = linear_copy(model)
    expected_squared, expected_smooth = [], []
    for i, (image, target) in enumerate(zip(images, classes, strict=True)):
        sigma = 0.2 * float(image.max() - image.min())
        per_copy = []
        for j in range(6):
            noise = np.random.default_rng([3, i, j]).normal(size=(SIDE, SIDE, 1))
            noisy = tf.constant((image + sigma * noise.astype(np.float32))[None])
            with tf.GradientTape() as tape:
                tape.watch(noisy)
                score = linear(noisy)[0, target]
            per_copy.append(tape.gradient(score, noisy).numpy()[0].sum(axis=-1))
        expected_squared.append(np.mean(np.square(per_copy), axis=0))
        expected_smooth.append(np.abs(np.mean(per_copy, axis=0)))
    np.testing.assert_allclose(squared, expected_squared, rtol=1e-3, atol=1e-9)
    np.testing.assert_allclose(smooth, expected_smooth, rtol=1e-3, atol=1e-7)
    assert (squared >= smooth**2 - 1e-9).all() and (squared > smooth**2 + 1e-9).any()  # Jensen
    both = attributions.smoothed("backprop", images, classes)  # one set of copies for the two
    np.testing.assert_allclose(both[0], smooth, rtol=1e-5)
    np.testing.assert_allclose(both[1], squared, rtol=1e-5)


def test_deconvolution_differs_from_backprop_exactly_where_the_input_was_negative():
    inputs = keras.Input((SIDE, SIDE, 3))
    x = keras.layers.Flatten()(keras.layers.LeakyReLU(0.3)(inputs))
    ones = keras.initializers.Constant(1.0)  # score = sum of the activations: upstream signal 1
    model = keras.Model(inputs, keras.layers.Dense(2, "softmax", kernel_initializer=ones)(x))
    images = np.random.default_rng(0).normal(size=(2, SIDE, SIDE, 1)).repeat(3, axis=-1)
    images = images.astype(np.float32)
    attributions = GradientAttributions(model)
    backprop = attributions.per_copy("backprop", images, [0, 0])[:, 0]
    deconvolution = attributions.per_copy("deconvolution", images, [0, 0])[:, 0]
    negative = images[..., 0] < 0
    assert negative.any() and (~negative).any()
    np.testing.assert_array_equal(~np.isclose(backprop, deconvolution), negative)
    np.testing.assert_allclose(backprop[negative], 3 * 0.3, rtol=1e-6)  # 3 channels x slope
    np.testing.assert_allclose(deconvolution, 3.0, rtol=1e-6)
    # the copy computes the same scores; the model keeps its LeakyReLU layer
    copy = deconvnet_copy(model)
    np.testing.assert_allclose(copy(images), linear_copy(model)(images), rtol=1e-6)
    assert isinstance(model.layers[1], keras.layers.LeakyReLU)


def test_batching_does_not_change_the_maps():
    model, images, classes = smooth_model(), gray_images(3), np.array([0, 1, 0])
    batched = GradientAttributions(model, ig_steps=6, batch_size=5)  # chunks straddle images
    one_by_one = GradientAttributions(model, ig_steps=6, batch_size=64)
    together = batched.maps("ig_black_white", images, classes)
    for i in range(3):
        alone = one_by_one.maps("ig_black_white", images[i : i + 1], classes[i : i + 1])[0]
        np.testing.assert_allclose(together[i], alone, rtol=1e-4, atol=1e-7)


def test_expected_gradients_without_baselines_says_what_to_pass():
    with pytest.raises(ValueError, match="baselines="):
        GradientAttributions(smooth_model()).maps("expected_gradients", gray_images(1), [0])


def test_region_maps_are_constant_on_each_region():
    rng = np.random.default_rng(0)
    gray = np.full((64, 64), 30.0)
    gray[10:40, 20:50] = 200.0
    gray += rng.normal(0, 3, gray.shape)
    regions = segment_regions(gray, scales=(50, 200, 1000), dilation=0)
    # without dilation, each scale's segments tile the image
    np.testing.assert_array_equal(regions.sum(axis=0), 3)
    attribution = rng.random(gray.shape)
    attribution[10:40, 20:50] += 1.0  # the bright square matters most
    region_map = xrai_map(attribution, regions, min_new_pixels=1)
    # the map is constant on every cell of the common refinement of the segmentations
    cells = np.unique(regions.reshape(len(regions), -1).T, axis=0, return_inverse=True)[1]
    for cell in np.unique(cells):
        values = region_map.ravel()[cells.ravel() == cell]
        assert np.ptp(values) == 0
    # the square is one region, added first, with its mean attribution as its value
    square = np.zeros(gray.shape, bool)
    square[10:40, 20:50] = True
    assert region_map[~square].max() < region_map[square].min()
    assert region_map.max() == pytest.approx(attribution[region_map == region_map.max()].mean())
    # one scale tiles the image: every segment gets its mean attribution
    tiles = segment_regions(gray, scales=(200,), dilation=0)
    single = xrai_map(attribution, tiles, min_new_pixels=1)
    for tile in tiles:
        np.testing.assert_allclose(single[tile], attribution[tile].mean())
    # dilated (XRAI's default) regions overlap, and the map is still piecewise constant
    dilated = segment_regions(gray, scales=(50, 200, 1000))
    assert (dilated.sum(axis=0) > 3).any()
    assert len(np.unique(xrai_map(attribution, dilated))) <= len(dilated) + 1
