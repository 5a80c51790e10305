"""Transformer explanations on toy ViTs with known answers, and the formulas on their own."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from breastdensity.backbones import EXPLAIN_LAYER, ViTConfig, build_backbone, build_vit
from breastdensity.cam import GradCam
from breastdensity.explain import transformer
from breastdensity.explain.transformer import (
    TransformerExplainer,
    attention_layers,
    explainer_for,
    relevance_matrix,
    relevance_row,
    rollout_matrix,
)
from breastdensity.network import build_resnet

PATCH = 16
SIZE = 32  # 2 x 2 patches: tokens 0 (class), 1..4 (patches, row by row)


def bright_patch_vit(sharpness: float = 1.0) -> keras.Model:
    """A 2-block ViT with hand-set weights in which one token alone carries the class.

    Every patch token is (brightness, 0, 0, 1 - brightness): (1, 0, 0, 0) for a white
    patch, (0, 0, 0, 1) for a black one; the class token is (0, 1, 0, 0). In both blocks
    head 0 lets the class token (feature 1 in its query) look at bright tokens (feature 0
    in their keys) and read their brightness; head 1 is all zero (uniform attention, no
    value), so averaging the heads matters. Only the last block writes what the class
    token read into feature 2, and the head scores feature 2 for class 0 and against
    class 1. Everything else is zero (MLPs) or the identity (LayerNorms). So on an image
    with one white patch, class 0 wins because of that patch, and every method must put
    it on top.
    """
    config = ViTConfig(patch_size=PATCH, num_layers=2, width=4, mlp_width=4, num_heads=2)
    model = build_vit(SIZE, config=config)
    pixels = PATCH * PATCH * 3
    for layer in model.layers:
        weights = [np.zeros_like(w) for w in layer.get_weights()]
        if not weights:
            continue
        if layer.name == "patch_embedding":  # kernel (16, 16, 3, 4), bias (4,)
            weights[0][..., 0], weights[0][..., 3], weights[1][3] = 1 / pixels, -1 / pixels, 1
        elif layer.name == "class_token_and_positions":  # class token (1, 1, 4), positions 0
            weights[0][0, 0, 1] = 1.0
        elif "norm" in layer.name:  # gamma 1, beta 0
            weights[0][:] = 1.0
        elif layer.name.endswith("_attention"):
            # query, key, value kernels (4, heads, 2), their biases, output kernel (heads, 2, 4), bias
            weights[0][1, 0, 0] = sharpness  # head 0 queries with the class-token feature
            weights[2][0, 0, 0] = sharpness  # ... the brightness of the keys
            weights[4][0, 0, 0] = 1.0  # and reads the brightness
            if layer.name == "block2_attention":
                weights[6][0, 0, 2] = 1.0  # into feature 2
        elif layer.name == "predictions":  # kernel (4, 4)
            weights[0][2, 0], weights[0][2, 1] = 3.0, -3.0
        layer.set_weights(weights)
    return model


def one_white_patch_each() -> np.ndarray:
    """(4, 32, 32, 3): image k has its k-th patch (row by row) white, the rest black."""
    images = np.zeros((4, SIZE, SIZE, 3), np.float32)
    for k in range(4):
        row, column = divmod(k, 2)
        images[k, row * PATCH : (row + 1) * PATCH, column * PATCH : (column + 1) * PATCH] = 1.0
    return images


@pytest.fixture(scope="module")
def toy():
    return bright_patch_vit()


def run(explainer, method, images, classes=None):
    if method == "rollout":
        return explainer.rollout(images)
    return getattr(explainer, method)(images, classes)


def test_the_toy_is_decided_by_its_white_patch(toy):
    probabilities = toy.predict(one_white_patch_each(), verbose=0)
    assert (probabilities.argmax(axis=1) == 0).all()
    black = toy.predict(np.zeros((1, SIZE, SIZE, 3), np.float32), verbose=0)
    assert black[0, 0] < probabilities[0, 0]


@pytest.mark.parametrize("method", ["grad_cam", "rollout", "chefer"])
def test_the_token_that_carries_the_class_comes_out_on_top(toy, method):
    images = one_white_patch_each()
    result = run(TransformerExplainer(toy), method, images, classes=[0] * 4)
    assert result.grid.shape == (4, 2, 2)
    assert result.maps.shape == (4, SIZE, SIZE)
    assert result.maps.min() >= 0 and result.maps.max() <= 1
    for k in range(4):
        assert result.grid[k].argmax() == k, (method, k, result.grid[k])
        others = np.delete(result.grid[k].ravel(), k)
        assert result.grid[k].ravel()[k] > others.max()
        # the image-size map peaks on the white patch too
        row, column = np.unravel_index(result.maps[k].argmax(), (SIZE, SIZE))
        assert (row // PATCH) * 2 + column // PATCH == k
    expected_classes = [-1] * 4 if method == "rollout" else [0] * 4
    assert result.classes.tolist() == expected_classes
    np.testing.assert_allclose(result.probabilities.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("method", ["grad_cam", "chefer"])
def test_class_specific_methods_leave_out_the_token_that_argues_against_the_class(toy, method):
    # Class 1 is scored against feature 2: the white patch speaks against it.
    result = run(TransformerExplainer(toy), method, one_white_patch_each(), classes=[1] * 4)
    for k in range(4):
        assert result.grid[k].ravel()[k] == 0
        assert result.grid[k].max() > 0


def test_rollout_of_identity_attention_is_the_identity():
    identity = tf.eye(5, batch_shape=(2, 3))  # (B, heads, T, T)
    rollout = rollout_matrix([identity, identity, identity])
    np.testing.assert_allclose(rollout, np.broadcast_to(np.eye(5), (2, 5, 5)), atol=1e-7)


def reference_rollout(attentions):
    """Abnar & Zuidema, written with square matrices in numpy."""
    result = np.eye(attentions[0].shape[-1])
    for attention in attentions:
        mixed = attention.mean(axis=1) + np.eye(attention.shape[-1])  # (B, T, T)
        result = (mixed / mixed.sum(axis=-1, keepdims=True)) @ result
    return result


def random_attention(rng, batch, heads, tokens):
    logits = rng.normal(size=(batch, heads, tokens, tokens))
    return np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)


def test_rollout_matches_the_square_formula_also_when_the_last_block_has_one_row(rng):
    attentions = [random_attention(rng, 2, 3, 6) for _ in range(3)]
    expected = reference_rollout(attentions)  # (B, T, T)
    square = rollout_matrix(attentions).numpy()
    np.testing.assert_allclose(square, expected, atol=1e-5)
    np.testing.assert_allclose(square.sum(axis=-1), 1.0, atol=1e-5)
    # The last block of our ViTs computes the class token's row alone.
    class_row = rollout_matrix([*attentions[:-1], attentions[-1][:, :, :1]]).numpy()
    np.testing.assert_allclose(class_row, expected[:, :1], atol=1e-5)


def test_relevance_formula(rng):
    attentions = [random_attention(rng, 2, 3, 6) for _ in range(3)]
    gradients = [rng.normal(size=a.shape) for a in attentions]
    expected = np.broadcast_to(np.eye(6), (2, 6, 6))
    for attention, gradient in zip(attentions, gradients, strict=True):
        expected = expected + np.maximum(gradient * attention, 0).mean(axis=1) @ expected
    np.testing.assert_allclose(relevance_matrix(attentions, gradients), expected, atol=1e-5)
    class_row = relevance_matrix(
        [*attentions[:-1], attentions[-1][:, :, :1]], [*gradients[:-1], gradients[-1][:, :, :1]]
    )
    np.testing.assert_allclose(class_row, expected[:, :1], atol=1e-5)
    zeros = [np.zeros_like(a) for a in attentions]
    np.testing.assert_allclose(relevance_matrix(attentions, zeros), np.eye(6)[None].repeat(2, 0))


def test_relevance_row_is_the_row_of_the_matrix(rng):
    for blocks in (1, 2, 4):
        attentions = [random_attention(rng, 2, 3, 6) for _ in range(blocks)]
        gradients = [rng.normal(size=a.shape) for a in attentions]
        matrix = relevance_matrix(attentions, gradients).numpy()  # (B, T, T)
        for row in (0, 3):
            np.testing.assert_allclose(
                relevance_row(attentions, gradients, row), matrix[:, row], rtol=1e-5, atol=1e-6
            )
        # the last block of our ViTs queries the class token alone
        class_query = [*attentions[:-1], attentions[-1][:, :, :1]]
        class_gradient = [*gradients[:-1], gradients[-1][:, :, :1]]
        np.testing.assert_allclose(
            relevance_row(class_query, class_gradient), matrix[:, 0], rtol=1e-5, atol=1e-6
        )


def reference_chefer(model, images, classes) -> np.ndarray:
    """Chefer's map written out: eager, full (T, T) relevance matrices, (B, H/p, W/p)."""
    head = model.get_layer("predictions")
    attentions_and_features = keras.Model(
        model.input, [*[layer.output[1] for layer in attention_layers(model)], head.input]
    )
    with tf.GradientTape() as tape:
        *attentions, features = attentions_and_features(images)
        scores = features @ head.kernel + head.bias  # (B, 4) before the softmax
        target = tf.reduce_sum(tf.gather(scores, classes, batch_dims=1))
    gradients = tape.gradient(target, attentions)
    relevance = np.eye(attentions[0].shape[-1])[None]  # R = I
    for attention, gradient in zip(attentions, gradients, strict=True):
        weighted = np.maximum(gradient * attention, 0).mean(axis=1)  # (B, Q, T)
        relevance = relevance[:, : weighted.shape[1]] + weighted @ relevance
    side = int(np.sqrt(relevance.shape[-1] - 1))
    return relevance[:, 0, 1:].reshape(len(images), side, side)


@pytest.mark.parametrize("xla", [True, False], ids=["xla", "no-xla"])
def test_compiled_chefer_equals_the_full_matrix_computation(xla, monkeypatch, rng):
    # Both compilations (XLA for narrow ViTs, TensorFlow's for wide ones), on a random ViT
    # and a batch that XLA's path pads (5 -> 8).
    monkeypatch.setattr(transformer, "XLA_MAX_WIDTH", 10_000 if xla else 0)
    keras.utils.set_random_seed(2)
    model = build_vit(
        32, config=ViTConfig(patch_size=8, num_layers=3, width=16, mlp_width=32, num_heads=2)
    )
    images = rng.uniform(-1, 1, size=(5, 32, 32, 3)).astype("float32")
    classes = np.array([0, 1, 2, 3, 1], np.int32)
    explainer = TransformerExplainer(model)
    assert explainer._chefer_xla == xla
    result = explainer.chefer(images, classes)
    expected = reference_chefer(model, images, classes)  # (5, 4, 4)
    np.testing.assert_allclose(result.grid, expected, rtol=1e-4, atol=1e-6)
    assert result.classes.tolist() == classes.tolist()
    np.testing.assert_allclose(result.probabilities, model(images), rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def small_vit():
    keras.utils.set_random_seed(1)
    return build_vit(
        64, config=ViTConfig(patch_size=16, num_layers=3, width=32, mlp_width=64, num_heads=4)
    )


@pytest.mark.slow
def test_compiled_chefer_and_grad_cam_equal_the_few_eager_lines(small_vit, rng):
    model = small_vit
    images = rng.uniform(-0.5, 0.5, size=(3, 64, 64, 3)).astype("float32")
    head = model.get_layer("predictions")
    parts = keras.Model(
        model.input,
        [
            *[layer.output[1] for layer in attention_layers(model)],
            model.get_layer(EXPLAIN_LAYER).output,
            head.input,
        ],
    )
    with tf.GradientTape() as tape:
        *attentions, grid, features = parts(images)
        scores = features @ head.kernel + head.bias  # (B, 4) before the softmax
        target = tf.reduce_sum(scores[:, 2])  # class 2 for every image
    attention_gradients, grid_gradients = tape.gradient(target, [attentions, grid])
    relevance = np.eye(attentions[0].shape[-1])[None]  # R = I
    for attention, gradient in zip(attentions, attention_gradients, strict=True):
        weighted = np.maximum(gradient * attention, 0).mean(axis=1)  # (B, Q, T)
        relevance = relevance[:, : weighted.shape[1]] + weighted @ relevance
    chefer = relevance[:, 0, 1:].reshape(3, 4, 4)
    alphas = grid_gradients.numpy().mean(axis=(1, 2), keepdims=True)
    grad_cam = np.maximum((grid.numpy() * alphas).sum(axis=-1), 0)

    explainer = TransformerExplainer(model)
    np.testing.assert_allclose(explainer.chefer(images, [2] * 3).grid, chefer, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(
        explainer.grad_cam(images, [2] * 3).grid, grad_cam, rtol=1e-4, atol=1e-6
    )
    # and the stages' Grad-CAM, pointed at the ViT's layer to explain, computes the same
    stage_cam = GradCam(model, EXPLAIN_LAYER)(images, [2] * 3, expand=False).raw
    np.testing.assert_allclose(stage_cam, grad_cam, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_predicted_class_is_explained_by_default_and_shapes_follow_the_model(small_vit, rng):
    images = rng.uniform(-0.5, 0.5, size=(5, 64, 64, 3)).astype("float32")
    explainer = explainer_for(small_vit)
    assert explainer_for(small_vit) is explainer  # compiled once per model
    predicted = small_vit.predict(images, verbose=0).argmax(axis=1)
    for method in ("grad_cam", "chefer"):
        result = getattr(explainer, method)(images)
        assert result.classes.tolist() == predicted.tolist()
        assert result.grid.shape == (5, 4, 4) and result.maps.shape == (5, 64, 64)
    rollout = explainer.rollout(images[:2])  # any batch size, the same compiled function
    assert rollout.grid.shape == (2, 4, 4)
    assert (rollout.grid > 0).all()  # rollout rows are mixtures: every patch contributes


def test_vit_tiny_maps_have_its_patch_grid(rng):
    model = build_backbone("vit-tiny", 128)
    images = rng.uniform(-0.5, 0.5, size=(2, 128, 128, 3)).astype("float32")
    result = TransformerExplainer(model).chefer(images)
    assert result.grid.shape == (2, 8, 8) and result.maps.shape == (2, 128, 128)


def test_a_network_without_attention_is_a_clear_error():
    with pytest.raises(ValueError, match="no MultiHeadAttention layer"):
        TransformerExplainer(build_resnet(64))
