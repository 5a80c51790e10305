"""Explanation methods: shapes, ranges, known answers on a toy problem, and a quiet run."""

import logging
import warnings

import keras
import numpy as np
import pytest
from conftest import corner_model, quadrant_images
from tf_keras_vis.saliency import Saliency
from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
from tf_keras_vis.utils.scores import CategoricalScore

from breastdensity.cam import GradCam
from breastdensity.explain.attributions import GradientAttributions
from breastdensity.explain.methods import METHODS, Explainer, occlusion_sensitivity
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
        if not explainer.supports(method):  # the transformer methods: a ViT's attention
            with pytest.raises(ValueError, match="no MultiHeadAttention layer"):
                explainer.explain(method, images)
            continue
        maps = explainer.explain(method, images)
        assert maps.shape == (2, 64, 64), method
        assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1 + 1e-6, method
    first, second = explainer.explain("random", images), explainer.explain("random", images)
    assert abs(np.corrcoef(first.ravel(), second.ravel())[0, 1]) < 0.1  # independent draws
    # SmoothGrad's noise is seeded per call: same image, same map
    smooth = explainer.explain("smoothgrad", images)
    np.testing.assert_array_equal(explainer.explain("smoothgrad", images), smooth)
    with pytest.raises(ValueError, match="unknown method"):
        explainer.explain("lime", images)


@pytest.mark.slow
def test_saliency_is_tf_keras_vis_saliency(network):
    images = quadrant_images(np.random.default_rng(6), [1, 2], 64)
    ours = Explainer(network).explain("saliency", images, [1, 2])
    # tf-keras-vis calls the model with a list of inputs: give it a model that takes one
    listed = keras.Model([network.input], network.output)
    theirs = Saliency(listed, ReplaceToLinear(), clone=True)(CategoricalScore([1, 2]), images)
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_integrated_gradients_completeness():
    # The corner model's score before its softmax is linear in the image, so the
    # path integral is exact: attributions sum to f(x) - f(baseline) up to float error.
    corner = corner_model(3.0)
    logits = keras.Model(corner.input, corner.layers[-2].output)
    image = np.random.default_rng(3).normal(1.0, 0.5, (1, 32, 32, 3)).astype(np.float32)
    engine = GradientAttributions(corner, ig_steps=16)
    attributions = engine.per_copy("integrated_gradients", image, [1])  # from zero
    difference = float(logits(image)[0, 1] - logits(np.zeros_like(image))[0, 1])
    assert abs(difference) > 0.1  # a real difference to account for
    assert attributions.sum() == pytest.approx(difference, rel=1e-3)


@pytest.mark.slow
def test_explaining_prints_no_warning_and_compiles_once(network, capsys):
    # Keras warns when a model is called with inputs of another structure, and
    # TensorFlow logs a paragraph when a compiled function is traced again and again
    # (new shapes, or a new tf.function per object): a notebook loop showed both per image.
    rng = np.random.default_rng(7)
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    tensorflow_logger = logging.getLogger("tensorflow")
    tensorflow_logger.addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            explainer = Explainer(network, score_cam_max_channels=2, smooth_samples=2, ig_steps=4)
            for labels in ([0], [3, 1]):
                images = quadrant_images(rng, labels, 64)
                for method in (
                    "gradcam",
                    "density_gradcam",
                    "gradcam++",
                    "scorecam",
                    "saliency",
                    "smoothgrad",
                    "integrated_gradients",
                    "deconvolution",
                ):
                    explainer.explain(method, images)
            for labels in ([0, 1, 2, 3], [2, 1, 0], [1], [0, 3]):  # a new GradCam per batch
                GradCam(network)(quadrant_images(rng, labels, 64))
    finally:
        tensorflow_logger.removeHandler(handler)
    assert not [r.getMessage() for r in records if "retracing" in r.getMessage()]
    assert GradCam(network)._compute.experimental_get_tracing_count() == 1  # any batch size
    assert "step" not in capsys.readouterr().out  # no progress bar (Score-CAM's predict)


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
