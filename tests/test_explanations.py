"""Explanation methods: shapes, ranges, and known answers on a toy problem."""

import keras
import numpy as np
import pytest
from conftest import corner_model
from test_cam import quadrant_images

from breastdensity.explanations import (
    METHODS,
    Explainer,
    occlusion_sensitivity,
    signed_integrated_gradients,
)
from breastdensity.network import build_resnet


@pytest.fixture(scope="module")
def network():
    """The real architecture with seeded random weights: every method must run on it."""
    keras.utils.set_random_seed(4)
    return build_resnet(64)


@pytest.mark.slow
def test_every_method_gives_normalised_maps(network):
    explainer = Explainer(
        network,
        score_cam_max_channels=4,
        smooth_samples=3,
        ig_steps=8,
        occlusion_patch=0.25,
        occlusion_stride=0.25,
        baselines=quadrant_images(np.random.default_rng(5), [1, 2], 64),  # expected_gradients
        eg_samples=4,
    )
    images = quadrant_images(np.random.default_rng(2), [0, 3], 64)
    for method in METHODS:
        maps = explainer.explain(method, images)
        assert maps.shape == (2, 64, 64), method
        assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1 + 1e-6, method
    first, second = explainer.explain("random", images), explainer.explain("random", images)
    assert abs(np.corrcoef(first.ravel(), second.ravel())[0, 1]) < 0.1  # independent draws
    # SmoothGrad's noise is seeded per call (same image, same map), whatever numpy's state
    # (tf-keras-vis draws it from numpy's legacy global generator, hence the legacy calls)
    np.random.seed(1)  # noqa: NPY002
    smooth = explainer.explain("smoothgrad", images)
    np.random.seed(2)  # noqa: NPY002
    before = np.random.get_state()  # noqa: NPY002
    np.testing.assert_array_equal(explainer.explain("smoothgrad", images), smooth)
    after = np.random.get_state()  # noqa: NPY002
    np.testing.assert_array_equal(after[1], before[1])  # the caller's state is left alone
    assert after[2] == before[2]
    with pytest.raises(ValueError, match="unknown method"):
        explainer.explain("lime", images)


def test_integrated_gradients_completeness():
    # The corner model's score before its softmax is linear in the image, so the
    # path integral is exact: attributions sum to f(x) - f(baseline) up to float error.
    corner = corner_model(3.0)
    linear = keras.Model(corner.inputs, corner.layers[-2].output)  # the logits
    image = np.random.default_rng(3).normal(1.0, 0.5, (1, 32, 32, 3)).astype(np.float32)
    attributions = signed_integrated_gradients(linear, image, [1], steps=16)
    difference = float(linear(image)[0, 1] - linear(np.zeros_like(image))[0, 1])
    assert abs(difference) > 0.1  # a real difference to account for
    assert attributions.sum() == pytest.approx(difference, rel=1e-3)


def test_occlusion_finds_the_only_region_that_matters():
    # A toy model whose class-1 probability depends only on the top-left 16x16 corner.
    # Unsaturated (class-1 probability 0.95), so occluding the corner drops it by about 0.05,
    # far above float32 round-off (which made this test fail on some machines at weight 3,
    # where the drop was 1e-6 and a patch outside the corner showed 6e-8).
    model = corner_model(0.5)
    image = np.ones((1, 32, 32, 3), np.float32)
    maps = occlusion_sensitivity(model, image, [1], patch=0.25, stride=0.25)
    assert maps[0, :16, :16].min() > 1e-2
    outside = np.concatenate([maps[0, 16:, :].ravel(), maps[0, :16, 16:].ravel()])
    assert np.abs(outside).max() < 1e-6  # nothing there matters: no drop beyond round-off
