"""Stage 1 with other networks: --backbone, --pretrained, --lr-schedule cosine-restarts,
--early-stopping, on tiny phantom sets at 64 px."""

import json

import keras
import numpy as np
import pandas as pd
import pytest
import Train_ResNet
from keras.src.utils import file_utils

from breastdensity.conventions import BACKBONES, CONFIG_FILE, FINAL_WEIGHTS
from breastdensity.data.phantoms import generate_dataset
from breastdensity.inference import load_model
from breastdensity.run_folder import setting_differences
from breastdensity.training import RESTART_MINIMUM, cosine_restarts


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    out = tmp_path_factory.mktemp("backbone_data")
    generate_dataset(out, (8, 4, 0), (80, 64), seed=7)
    return out


def train(phantoms, models_root, *flags):
    return Train_ResNet.main(
        [
            "--projection", "CC_R", "--data-root", str(phantoms), "--models-root",
            str(models_root), "--img-size", "64", "--batch-size", "8", "--epochs", "2",
            "--optimizer", "adam", *map(str, flags),
        ]
    )  # fmt: skip


def test_each_backbone_gets_its_own_default_size_and_the_resnet_stays_the_reference():
    sizes = {
        name: Train_ResNet.parse_arguments(["--projection", "CC_R", "--backbone", name]).img_size
        for name in BACKBONES
    }
    assert sizes == {"resnet": 650, "efficientnet": 224, "vit": 224, "vit-tiny": 128}
    args = Train_ResNet.parse_arguments(["--projection", "CC_R"])
    assert (args.backbone, args.lr_schedule, args.early_stopping) == ("resnet", "plateau", None)
    settings = Train_ResNet.resolved_settings(args, "CC_R", 1)
    assert settings["backbone"] == "resnet" and settings["pretrained"] is None
    # A run folder written before the flags existed resumes as the same run.
    older = {key: value for key, value in settings.items()}
    for key in ("backbone", "pretrained", "early_stopping"):
        del older[key]
    assert setting_differences(older, settings) == {}
    assert "backbone" in setting_differences(older, {**settings, "backbone": "vit-tiny"})


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--backbone", "vit-tiny", "--img-size", "100"], "multiple of 16"),
        (["--backbone", "vit", "--img-size", "240"], "multiple of 32"),
        (["--pretrained", "imagenet"], "no ImageNet weights for --backbone resnet"),
        (["--backbone", "vit-tiny", "--pretrained", "imagenet"], "no ImageNet weights"),
        (["--backbone", "efficientnet", "--pretrained", "nowhere.h5"], "neither 'imagenet' nor"),
        (["--backbone", "vit-tiny", "--cardinality", "2"], "--cardinality shapes the reference"),
        (["--efficientnet-variant", "B3"], "needs --backbone efficientnet"),
        (["--early-stopping", "0"], "at least 1 epoch"),
        (["--lr-schedule", "cosine-restart"], "invalid choice"),
    ],
)
def test_flags_that_do_not_fit_the_backbone_are_refused_before_any_work(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_status:
        Train_ResNet.parse_arguments(["--projection", "CC_R", *flags])
    assert exit_status.value.code == 2
    assert message in capsys.readouterr().err


def test_cosine_restarts_cycle_down_to_the_minimum_and_end_there():
    total = 700
    schedule = cosine_restarts(1e-3, total)
    rate = [float(schedule(step)) for step in range(total + 1)]
    # three cycles of 100, 200 and 400 steps, each from 1e-3 down to 1e-6
    assert rate[0] == pytest.approx(1e-3)
    for end in (100, 300):
        assert rate[end - 1] < 2e-5 and rate[end] == pytest.approx(1e-3)
    assert rate[total - 1] < 2e-6 and min(rate) >= RESTART_MINIMUM * (1 - 1e-5)
    assert np.all(np.diff(rate[1:100]) < 0) and np.all(np.diff(rate[301:700]) < 0)


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["efficientnet", "vit-tiny"])
def test_other_backbones_train_with_the_thesis_schedule_and_early_stopping(
    backbone, phantoms, tmp_path
):
    status = train(
        phantoms, tmp_path, "--backbone", backbone,
        "--lr-schedule", "cosine-restarts", "--early-stopping", "1", "--epochs", "3",
    )  # fmt: skip
    assert status == 0
    folder = tmp_path / "CC_R_model"
    config = json.loads((folder / CONFIG_FILE).read_text())
    assert (config["backbone"], config["early_stopping"]) == (backbone, 1)
    assert config["lr_schedule"] == "cosine-restarts"
    history = pd.read_csv(folder / "history.csv")
    assert "val_precision" in history.columns  # what early stopping watched
    model = load_model(folder / FINAL_WEIGHTS)
    assert model.input_shape == (None, 64, 64, 3) and model.output_shape == (None, 4)
    images = np.random.default_rng(0).normal(0, 0.2, (2, 64, 64, 3)).astype("float32")
    probabilities = model.predict(images, verbose=0)
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)


@pytest.mark.slow
def test_pretrained_weights_start_the_efficientnet_and_offline_imagenet_is_a_clear_error(
    phantoms, tmp_path, monkeypatch, capsys
):
    # Weights as keras.applications keeps them (the feature extractor without its top),
    # saved here by the test: what a user copies from a machine with downloads.
    keras.utils.set_random_seed(11)
    extractor = keras.applications.EfficientNetB0(
        include_top=False, weights=None, input_shape=(64, 64, 3)
    )
    weights_file = tmp_path / "efficientnetb0_notop.weights.h5"
    extractor.save_weights(weights_file)
    stem = extractor.get_layer("stem_conv").get_weights()[0]
    # a rate so small that one epoch leaves the weights where they started
    status = train(
        phantoms, tmp_path / "from_file", "--backbone", "efficientnet", "--pretrained",
        weights_file, "--epochs", "1", "--learning-rate", "1e-12",
    )  # fmt: skip
    assert status == 0
    trained = load_model(tmp_path / "from_file" / "CC_R_model" / FINAL_WEIGHTS)
    assert np.allclose(trained.get_layer("stem_conv").get_weights()[0], stem, atol=1e-6)
    config = json.loads((tmp_path / "from_file" / "CC_R_model" / CONFIG_FILE).read_text())
    assert config["pretrained"] == str(weights_file.resolve())

    # Without internet, --pretrained imagenet stops before training with what to do.
    def offline(fname, origin, **kwargs):
        raise Exception(f"URL fetch failure on {origin}: [Errno -2] Name or service not known")

    monkeypatch.setattr(file_utils, "get_file", offline)
    status = train(
        phantoms, tmp_path / "imagenet", "--backbone", "efficientnet", "--pretrained", "imagenet"
    )
    assert status == 2
    error = capsys.readouterr().err
    assert "could not get the ImageNet weights of EfficientNetB0" in error
    assert "--pretrained path/to/efficientnetb0_notop.h5" in error
    assert not list((tmp_path / "imagenet").rglob(FINAL_WEIGHTS))
