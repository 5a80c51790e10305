"""Grad-CAM core: equality with tf-keras-vis, the layer read from the model, empty maps,
overlays and contours."""

import numpy as np
import pytest
import tensorflow as tf
from conftest import known_head_network, quadrant_images
from tf_keras_vis.gradcam import Gradcam
from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
from tf_keras_vis.utils.scores import CategoricalScore

from breastdensity.backbones import EXPLAIN_LAYER, ViTConfig, build_vit
from breastdensity.cam import (
    DENSITY_WEIGHTS,
    GradCam,
    active_region,
    cam_file_names,
    class_maps_on_one_scale,
    density_map_layer,
    draw_contours,
    normalize_maps,
    overlay,
    peak_inside_breast,
    to_image_size,
    viewable,
)
from breastdensity.network import DENSITY_MAP_LAYER, LAST_RESIDUAL_LAYER


@pytest.fixture(scope="module")
def model():
    return known_head_network(96)


@pytest.mark.slow
def test_equals_tf_keras_vis_gradcam(model, rng):
    images = quadrant_images(rng, [0, 1, 3])
    grad_cam = GradCam(model)
    for classes in (None, [0, 2, 3], [0, 0, 0]):
        ours = grad_cam(images, classes)
        targets = ours.classes.tolist()
        # seek_penultimate_conv_layer=False: otherwise tf-keras-vis replaces our
        # (activation) layer by the nearest Conv2D before it, stage4_module3_conv3.
        theirs = Gradcam(model, model_modifier=ReplaceToLinear(), clone=True)(
            CategoricalScore(targets),
            images,
            penultimate_layer=LAST_RESIDUAL_LAYER,
            seek_penultimate_conv_layer=False,
        )
        assert ours.maps.shape == theirs.shape == (3, 96, 96)
        assert np.abs(ours.maps - theirs).max() <= 1e-4
    assert ours.valid.all()  # class 0: positive weights on positive-mean features
    assert (ours.maps.max(axis=(1, 2)) > 0.99).all()  # normalised to [0, 1]
    np.testing.assert_array_equal(ours.classes, [0, 0, 0])
    predicted = grad_cam(images).classes
    np.testing.assert_array_equal(predicted, [0, 0, 0])  # the head's bias makes class 0 win
    np.testing.assert_array_equal(predicted, model.predict(images, verbose=0).argmax(axis=1))
    # the model itself keeps its softmax
    np.testing.assert_allclose(model.predict(images, verbose=0).sum(axis=1), 1, atol=1e-5)


def test_density_map_equals_tf_keras_vis_gradcam_of_the_weighted_score(model, rng):
    images = quadrant_images(rng, [0, 2, 3])
    ours = GradCam(model, DENSITY_MAP_LAYER)(images, weights=DENSITY_WEIGHTS)
    theirs = Gradcam(model, model_modifier=ReplaceToLinear(), clone=True)(
        lambda scores: tf.reduce_sum(scores * DENSITY_WEIGHTS, axis=-1),
        images,
        penultimate_layer=DENSITY_MAP_LAYER,
        seek_penultimate_conv_layer=False,
    )
    assert ours.maps.shape == theirs.shape == (3, 96, 96)
    assert np.abs(ours.maps - theirs).max() <= 1e-4
    assert (
        model.get_layer(DENSITY_MAP_LAYER).output.shape[1]
        == 2 * (model.get_layer(LAST_RESIDUAL_LAYER).output.shape[1])
    )  # twice as fine
    # one-hot weights are the class map; classes and weights together are refused
    grad_cam = GradCam(model)
    np.testing.assert_allclose(
        grad_cam(images, weights=np.eye(4, dtype="float32")[[0, 2, 3]]).maps,
        grad_cam(images, [0, 2, 3]).maps,
        atol=1e-5,
    )
    with pytest.raises(ValueError, match="not both"):
        grad_cam(images, [0, 0, 0], weights=DENSITY_WEIGHTS)


def test_the_layer_comes_from_the_model(model, rng):
    # the reference ResNet names its last residual module and has a density-map layer
    assert GradCam(model).layer_name == LAST_RESIDUAL_LAYER
    assert density_map_layer(model) == DENSITY_MAP_LAYER
    # another backbone names EXPLAIN_LAYER, which its density map weighs too (no stage before)
    vit = build_vit(
        32, config=ViTConfig(patch_size=16, num_layers=1, width=8, mlp_width=8, num_heads=2)
    )
    assert GradCam(vit).layer_name == density_map_layer(vit) == EXPLAIN_LAYER
    images = rng.uniform(-0.5, 0.5, (2, 32, 32, 3)).astype("float32")
    density = GradCam(vit, density_map_layer(vit))(images, weights=DENSITY_WEIGHTS)
    assert density.maps.shape == (2, 32, 32) and np.isfinite(density.maps).all()


def test_an_empty_map_is_flagged_and_all_zero_not_nan(model, rng):
    result = GradCam(model)(quadrant_images(rng, [0, 1]), [1, 1])  # class 1: zero weights
    assert not result.valid.any()
    assert np.isfinite(result.maps).all() and result.maps.max() == 0.0


def test_class_maps_share_one_scale(model, rng):
    image = quadrant_images(rng, [2])
    maps = class_maps_on_one_scale(GradCam(model), image)
    assert maps.shape == (4, 96, 96) and maps.min() >= 0
    assert maps.max() == pytest.approx(1.0)
    assert maps[1].max() == 0.0  # class 1 has zero weights: nothing argues for it
    # the same map as GradCam's own, only scaled differently (GradCam: min-max of each map)
    separate = GradCam(model)(image, [0]).maps[0]
    np.testing.assert_allclose(normalize_maps(maps[:1])[0], separate, atol=1e-3)


def test_cam_file_names_follow_the_reference():
    names = cam_file_names("C", "te0001_C_CC_R", 650)
    assert names["input"] == "C_te0001_C_CC_R_650.png"
    assert names["overlay"] == "C_te0001_C_CC_R_overlay.png"
    assert len(set(names.values())) == len(names)


def test_overlay_is_not_washed_out(rng):
    gray = np.full((120, 80), 180, np.uint8)
    cam = np.clip(rng.random((120, 80)), 0, 1).astype(np.float32)
    blended = overlay(gray, cam, alpha=0.5)
    assert blended.shape == (120, 80, 3)
    white = (blended >= 250).all(axis=2).mean()
    assert white < 0.05
    # where the map is zero the image is unchanged
    cam[:10] = 0
    np.testing.assert_array_equal(overlay(gray, cam)[:10], np.repeat(gray[:10, :, None], 3, 2))


def test_contour_level_is_relative_to_the_maximum():
    cam = np.zeros((50, 50), np.float32)
    cam[10:20, 10:20] = 0.2  # the peak of a weak map
    cam[30:35, 30:35] = 0.09
    region = active_region(cam, 0.5)
    assert region[15, 15] and not region[32, 32]  # 0.09 < 0.5 * 0.2
    assert region.sum() == 100
    picture = draw_contours(np.zeros((50, 50), np.uint8), cam, 0.5)
    assert picture[10, 10:20].any() and not picture[32, 32].any()
    assert active_region(np.zeros((5, 5)), 0.5).sum() == 0


def test_maps_go_back_to_the_original_aspect():
    cam = np.zeros((64, 64), np.float32)
    cam[:, :32] = 1.0  # left half of the squashed square
    stretched = to_image_size(cam, (130, 90))
    assert stretched.shape == (130, 90)
    assert stretched[:, :40].min() > 0.99 and stretched[:, 50:].max() < 0.01
    assert viewable(np.zeros((4, 4, 3))).max() == 0


def test_peak_inside_breast_on_the_original_image():
    # original 40 x 20: breast on the right half (chest wall right), background 0 on the left
    gray = np.zeros((40, 20), np.uint8)
    gray[:, 10:] = 100
    cam = np.zeros((8, 8), np.float32)  # the network's square view
    cam[4, 6] = 1.0  # right part of the square -> right half of the original
    assert peak_inside_breast(cam, gray)
    cam[:] = 0
    cam[4, 1] = 1.0  # left part -> background
    assert not peak_inside_breast(cam, gray)
