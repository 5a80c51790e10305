"""Explanation methods: shapes, ranges, and known answers on a toy problem."""

import keras
import numpy as np
import pytest
from conftest import corner_model
from test_cam import quadrant_images

from breastdensity.cam import linear_copy
from breastdensity.explanations import (
    METHODS,
    Explainer,
    occlusion_sensitivity,
    signed_integrated_gradients,
)
from breastdensity.network import build_resnet


@pytest.fixture(scope="module")
def trained():
    keras.utils.set_random_seed(4)
    model = build_resnet(64)
    model.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy")
    labels = np.arange(48) % 4
    model.fit(
        quadrant_images(np.random.default_rng(1), labels, 64),
        np.eye(4)[labels],
        epochs=10,
        batch_size=8,
        verbose=0,
    )
    return model


def test_every_method_gives_normalised_maps(trained):
    explainer = Explainer(
        trained,
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


def test_integrated_gradients_completeness(trained):
    linear = linear_copy(trained)
    image = quadrant_images(np.random.default_rng(3), [2], 64)
    attributions = signed_integrated_gradients(linear, image, [2], steps=64)
    difference = float(linear(image)[0, 2] - linear(np.zeros_like(image))[0, 2])
    assert attributions.sum() == pytest.approx(difference, rel=0.1, abs=0.05)


def test_occlusion_finds_the_only_region_that_matters():
    # A toy model whose class-1 probability depends only on the top-left 16x16 corner.
    model = corner_model(3.0)
    image = np.ones((1, 32, 32, 3), np.float32)
    maps = occlusion_sensitivity(model, image, [1], patch=0.25, stride=0.25)
    assert maps[0, :16, :16].min() > 0 and maps[0, 16:, :].max() == 0 and maps[0, :, 16:].max() == 0
