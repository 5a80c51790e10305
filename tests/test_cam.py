"""Grad-CAM core: equality with tf-keras-vis, empty maps, overlays and contours."""

import keras
import numpy as np
import pytest
from tf_keras_vis.gradcam import Gradcam
from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
from tf_keras_vis.utils.scores import CategoricalScore

from breastdensity.cam import (
    active_region,
    draw_contours,
    grad_cam,
    overlay,
    to_image_size,
    viewable,
)
from breastdensity.network import LAST_RESIDUAL_LAYER, build_resnet


def quadrant_images(rng, labels, size=96):
    """Class k = a bright blob in quadrant k: a task a few epochs can learn."""
    images = rng.normal(0, 0.1, size=(len(labels), size, size, 3)).astype("float32")
    half = size // 2
    for image, label in zip(images, labels, strict=True):
        row, col = divmod(label, 2)
        image[row * half + 8 : row * half + 40, col * half + 8 : col * half + 40] += 1.0
    return images


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(3)
    model = build_resnet(96)
    model.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy")
    labels = np.arange(32) % 4
    images = quadrant_images(np.random.default_rng(0), labels)
    model.fit(images, np.eye(4)[labels], epochs=8, batch_size=8, verbose=0)
    return model


def test_equals_tf_keras_vis_gradcam(model, rng):
    images = quadrant_images(rng, [0, 1, 3])
    compared = 0
    for classes in (None, [0, 2, 3], [1, 1, 1]):
        ours = grad_cam(model, images, classes)
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
        compared += int(ours.valid.sum())
    assert compared >= 3  # at least some maps are not empty
    np.testing.assert_array_equal(ours.classes, [1, 1, 1])
    predicted = grad_cam(model, images).classes
    np.testing.assert_array_equal(predicted, model.predict(images, verbose=0).argmax(axis=1))
    # the model itself keeps its softmax
    np.testing.assert_allclose(model.predict(images, verbose=0).sum(axis=1), 1, atol=1e-5)


def test_constant_image_gives_a_flagged_empty_map_not_nan(model):
    constant = np.zeros((1, 96, 96, 3), np.float32)  # a uniform image after centring
    result = grad_cam(model, constant)
    assert np.isfinite(result.maps).all()
    if not result.valid[0]:
        assert result.maps.max() == 0.0


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
