"""The backbones: each builds with the contract the stages rely on, saves and loads, and loads weights."""

import keras
import numpy as np
import pytest
from keras.src.utils import file_utils

from breastdensity.backbones import (
    EXPLAIN_LAYER,
    PretrainedWeightsError,
    ViTConfig,
    build_backbone,
    build_vit,
    explain_layer_name,
)
from breastdensity.network import LAST_RESIDUAL_LAYER, build_resnet

# The smallest input of each backbone, so that the fast tier stays fast.
SMALL_SIZES = {"resnet": 64, "efficientnet": 32, "vit-tiny": 32, "vit": 64}


def small_backbone(name, seed=0, **options):
    keras.utils.set_random_seed(seed)
    if name == "vit":  # ViT-B/32's layout at 64 px (2 x 2 patches) but 2 narrow blocks
        options.setdefault("config", ViTConfig(32, 2, 64, 128, 4))
    return build_backbone(name, SMALL_SIZES[name], **options)


def images_for(model, count=3, seed=0):
    shape = (count, *model.input_shape[1:])  # (B, H, W, 3)
    return np.random.default_rng(seed).uniform(-0.5, 0.5, size=shape).astype("float32")


@pytest.mark.parametrize(
    "name", ["resnet", pytest.param("efficientnet", marks=pytest.mark.slow), "vit-tiny", "vit"]
)
def test_every_backbone_carries_what_the_stages_need(name):
    model = small_backbone(name)
    size = SMALL_SIZES[name]
    assert model.input_shape == (None, size, size, 3)  # fixed size, 3 channels
    probabilities = model.predict(images_for(model), verbose=0)
    assert probabilities.shape == (3, 4)
    assert (probabilities >= 0).all()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    target = model.get_layer(explain_layer_name(model)).output
    assert len(target.shape) == 4  # (None, h, w, K): a map Grad-CAM can weigh
    expected = LAST_RESIDUAL_LAYER if name == "resnet" else EXPLAIN_LAYER
    assert explain_layer_name(model) == expected


def test_resnet_backbone_is_the_reference_network_unchanged():
    reference = small_backbone("resnet")
    keras.utils.set_random_seed(0)
    direct = build_resnet(SMALL_SIZES["resnet"])
    assert [layer.name for layer in reference.layers] == [layer.name for layer in direct.layers]
    for ours, theirs in zip(reference.get_weights(), direct.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("resnet", marks=pytest.mark.slow),
        pytest.param("efficientnet", marks=pytest.mark.slow),
        "vit-tiny",
    ],
)
@pytest.mark.slow
def test_save_and_load_keeps_predictions_and_the_layer_to_explain(name, tmp_path):
    model = small_backbone(name)
    images = images_for(model)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(
        loaded.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-6
    )
    assert loaded.input_shape == model.input_shape
    assert explain_layer_name(loaded) == explain_layer_name(model)


def test_vit_tiny_and_its_patch_grid():
    model = build_backbone("vit-tiny", 128)
    assert model.count_params() == 637_572
    assert model.get_layer(EXPLAIN_LAYER).output.shape == (None, 8, 8, 128)  # 128 / 16
    attention = [
        layer for layer in model.layers if isinstance(layer, keras.layers.MultiHeadAttention)
    ]
    assert len(attention) == 4


@pytest.mark.slow
def test_vit_b32_is_the_thesis_network():
    model = build_backbone("vit", 224)
    assert model.count_params() == 87_458_308
    assert model.get_layer(EXPLAIN_LAYER).output.shape == (None, 7, 7, 768)  # 224 / 32
    attention = [
        layer for layer in model.layers if isinstance(layer, keras.layers.MultiHeadAttention)
    ]
    assert len(attention) == 12
    assert {(layer.num_heads, layer.key_dim) for layer in attention} == {(12, 64)}
    assert model.get_layer("block1_mlp1").units == 3072


def test_the_last_block_computes_the_class_token_as_a_full_block_would():
    # The last block queries the class token alone; replay it with every token queried,
    # with the same layers, and take the class token: the model's output must not change.
    model = small_backbone("vit-tiny")
    images = images_for(model)
    tokens = keras.Model(model.input, model.get_layer("block3_add2").output)(images)
    get = model.get_layer
    x = get("block4_norm1")(tokens)
    x = tokens + get("block4_attention")(x, x)  # every query
    x = x + get("block4_mlp2")(get("block4_mlp1")(get("block4_norm2")(x)))
    expected = get("predictions")(get("final_norm")(x[:, 0]))
    np.testing.assert_allclose(model.predict(images, verbose=0), expected, atol=1e-5)


def test_efficientnet_gets_its_0_255_input_inside_the_model():
    model = small_backbone("efficientnet")
    to_range = model.get_layer("to_efficientnet_range")
    # the project's range, x/255 minus the mean, around [-0.5, 0.5] -> keras.applications' 0-255
    np.testing.assert_allclose(to_range(np.array([-0.5, 0.0, 0.5], "float32")), [0, 127.5, 255])
    assert model.layers[1] is to_range  # first thing after the input


def test_unknown_backbone_or_variant_or_size_is_a_clear_error():
    with pytest.raises(ValueError, match="one of resnet, efficientnet, vit, vit-tiny"):
        build_backbone("densenet", 64)
    with pytest.raises(ValueError, match="B0, B1"):
        build_backbone("efficientnet", 32, variant="B9")
    with pytest.raises(ValueError, match="multiple of 16"):
        build_backbone("vit-tiny", 100)


def test_imagenet_weights_offline_fail_saying_what_to_do(monkeypatch):
    def offline(fname, origin, **kwargs):
        raise Exception(
            f"URL fetch failure on {origin}: None -- [Errno -2] Name or service not known"
        )

    # keras.applications downloads through this function (or finds the file in its cache):
    # made to fail as it does without internet, on any machine.
    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(PretrainedWeightsError) as error:
        build_backbone("efficientnet", 32, weights="imagenet")
    message = str(error.value)
    assert "--pretrained imagenet where downloads work" in message
    assert "efficientnetb0_notop.h5" in message and "~/.keras/models" in message
    with pytest.raises(PretrainedWeightsError, match="no ImageNet weights for the vit-tiny"):
        build_backbone("vit-tiny", 32, weights="imagenet")


@pytest.mark.slow
@pytest.mark.parametrize("name", [pytest.param("efficientnet", marks=pytest.mark.slow), "vit-tiny"])
def test_weights_saved_elsewhere_load_through_the_same_function(name, tmp_path):
    # As a model made on a machine with downloads (e.g. ImageNet-initialised on Colab) and
    # saved with save_weights arrives here: another seed, then the file's weights.
    trained = small_backbone(name, seed=0)
    path = tmp_path / f"{name}.weights.h5"
    trained.save_weights(path)
    loaded = small_backbone(name, seed=1, weights=path)
    images = images_for(trained)
    np.testing.assert_allclose(
        loaded.predict(images, verbose=0), trained.predict(images, verbose=0), atol=1e-6
    )
    with pytest.raises(FileNotFoundError, match="no such weights file"):
        small_backbone(name, weights=tmp_path / "missing.weights.h5")


def test_explain_layer_of_a_foreign_model_is_a_clear_error():
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Dense(4, activation="softmax")(inputs))
    with pytest.raises(ValueError, match="name the layer to explain 'explain_here'"):
        explain_layer_name(model)


def test_vit_options_are_checked():
    with pytest.raises(ValueError, match="split evenly into 3 heads"):
        build_vit(32, config=ViTConfig(16, 1, 16, 16, 3))
