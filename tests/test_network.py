import keras
import numpy as np
import pytest

from breastdensity.network import BN_MOMENTUM, LAST_RESIDUAL_LAYER, OUTPUT_LAYER, build_resnet


def conv_layers(model):
    return [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]


def test_reference_architecture_at_650_pixels():
    model = build_resnet(650)
    assert model.input_shape == (None, 650, 650, 3)
    assert model.output_shape == (None, 4)
    assert len(conv_layers(model)) == 41
    assert model.count_params() == 2_262_660


def test_no_lambda_layer_and_named_grad_cam_target():
    model = build_resnet(128)
    assert not [layer for layer in model.layers if isinstance(layer, keras.layers.Lambda)]
    target = model.get_layer(LAST_RESIDUAL_LAYER)
    assert target.output.shape == (None, 4, 4, 256)  # 128 / 32
    # The target feeds the head directly: dropout, pooling, dense.
    assert model.get_layer(OUTPUT_LAYER).activation is keras.activations.softmax


@pytest.mark.parametrize("momentum", [None, 0.99])
def test_every_batch_normalization_gets_the_momentum(momentum):
    model = build_resnet(64) if momentum is None else build_resnet(64, bn_momentum=momentum)
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(norms) == 41  # one per convolution
    assert {layer.momentum for layer in norms} == {momentum or BN_MOMENTUM}


@pytest.mark.slow
def test_softmax_outputs_sum_to_one(rng):
    model = build_resnet(64)
    images = rng.normal(size=(3, 64, 64, 3)).astype("float32")
    probabilities = model.predict(images, verbose=0)
    assert probabilities.shape == (3, 4)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert (probabilities >= 0).all()


@pytest.mark.parametrize("size", [64, (96, 80), 97])
def test_any_input_of_64_pixels_or_more_builds(size):
    model = build_resnet(size)
    assert model.output_shape == (None, 4)


def test_too_small_input_is_a_clear_error():
    with pytest.raises(ValueError, match="at least 64x64"):
        build_resnet(63)


def test_resnext_cardinality_uses_grouped_convolutions():
    model = build_resnet(64, cardinality=32)
    grouped = [layer for layer in conv_layers(model) if layer.groups == 32]
    assert len(grouped) == 12  # one 3x3 convolution per module
    assert model.count_params() < build_resnet(64).count_params()
    with pytest.raises(ValueError, match="cardinality"):
        build_resnet(64, cardinality=3)


def test_saved_model_keeps_its_input_size(tmp_path):
    from breastdensity.preprocessing import model_image_size

    model = build_resnet((96, 80))
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    assert model_image_size(loaded) == (96, 80)
