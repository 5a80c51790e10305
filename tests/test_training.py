"""Stage 1: Train_ResNet.py on tiny phantom sets at 64 px."""

import json
import os
import shutil
import signal
import subprocess
import sys

import keras
import numpy as np
import pandas as pd
import pytest
import Train_ResNet
from conftest import MYPROJECT, write_png

from breastdensity.conventions import (
    DatasetError,
    DataWarning,
    best_checkpoint,
    checkpoint_accuracy,
    checkpoint_epoch,
)
from breastdensity.data.phantoms import generate_dataset
from breastdensity.files import LOCK_FILE
from breastdensity.network import BN_MOMENTUM, REFERENCE_BN_MOMENTUM, build_resnet
from breastdensity.run_folder import ASSUMED_WHEN_MISSING, FINISHED, FRESH, RESUME, RunFolder
from breastdensity.training import (
    HISTORY_FILES,
    build_augmentation,
    make_augmentation,
    photometric_augmentation,
    save_model,
    target_matrix,
    training_datasets,
)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    out = tmp_path_factory.mktemp("train_data")
    generate_dataset(out, (16, 4, 0), (80, 64), seed=5)
    return out


def run_script(*args, timeout=300):
    """Run Train_ResNet.py in a fresh process (needed to configure devices)."""
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run(
        [sys.executable, str(MYPROJECT / "Train_ResNet.py"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment,
    )


@pytest.mark.slow
def test_two_epoch_run_writes_every_output(phantoms, tmp_path, capsys):
    status = Train_ResNet.main(
        [
            "--projection",
            "CC_R",
            "--data-root",
            str(phantoms),
            "--models-root",
            str(tmp_path),
            "--img-size",
            "64",
            "--epochs",
            "2",
            "--batch-size",
            "4",
        ]
    )
    assert status == 0
    folder = tmp_path / "CC_R_model"
    for name in HISTORY_FILES:
        values = np.loadtxt(folder / name, ndmin=1)
        assert values.shape == (2,), name
    history = pd.read_csv(folder / "history.csv")
    assert history["epoch"].tolist() == [1, 2]
    assert (folder / "training_curves.png").stat().st_size > 10_000
    assert list((folder / "logs").rglob("events.out.tfevents.*"))
    assert not (folder / "backup").exists()  # removed after a completed run
    # the best checkpoint is the first epoch that reached the highest val_acc (only
    # improvements are saved), whatever the two epochs happened to score
    best = best_checkpoint(folder)
    assert checkpoint_epoch(best) == history["val_acc"].idxmax() + 1
    assert checkpoint_accuracy(best) == pytest.approx(history["val_acc"].max(), abs=0.005)
    for path in (best, folder / "final_weights.keras"):
        model = keras.saving.load_model(path)
        assert model.input_shape == (None, 64, 64, 3)
        probabilities = model.predict(np.zeros((1, 64, 64, 3), np.float32), verbose=0)
        np.testing.assert_allclose(probabilities.sum(), 1.0, atol=1e-5)
    output = capsys.readouterr().out
    assert "epoch 2/2: loss" in output and "decoded images cached in memory" in output
    # a second run into the same folder must not overwrite it
    assert (
        Train_ResNet.main(
            [
                "--projection",
                "CC_R",
                "--data-root",
                str(phantoms),
                "--models-root",
                str(tmp_path),
                "--img-size",
                "64",
                "--epochs",
                "1",
            ]
        )
        == 2
    )
    assert "already holds a trained model" in capsys.readouterr().err


# Runs Train_ResNet.py as a node that is preempted (SIGKILL: no clean-up) right after
# the backup of epoch KILL_AFTER: deterministic, unlike killing from outside at a moment.
PREEMPTED_RUN = """
import os, runpy, signal, sys
import keras
save_backup = keras.callbacks.BackupAndRestore.on_epoch_end
def on_epoch_end(self, epoch, logs=None):
    save_backup(self, epoch, logs)
    if epoch + 1 == int(os.environ["KILL_AFTER"]):
        os.kill(os.getpid(), signal.SIGKILL)
keras.callbacks.BackupAndRestore.on_epoch_end = on_epoch_end
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.slow
def test_killed_run_resumes_from_its_last_epoch(phantoms, tmp_path):
    args = [
        "--projection",
        "CC_L",
        "--data-root",
        phantoms,
        "--models-root",
        tmp_path,
        "--img-size",
        "64",
        "--epochs",
        "5",
        "--batch-size",
        "2",
    ]
    folder = tmp_path / "CC_L_model"
    killed = subprocess.run(
        [sys.executable, "-c", PREEMPTED_RUN, str(MYPROJECT / "Train_ResNet.py"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "KILL_AFTER": "3"},
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    before = pd.read_csv(folder / "history.csv")
    assert before["epoch"].tolist() == [1, 2, 3]
    assert (folder / "backup").is_dir()

    refused = run_script(*args)  # without --resume: a clear refusal
    assert refused.returncode == 2 and "--resume" in refused.stderr

    resumed = run_script(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Resuming after epoch 3" in resumed.stdout
    after = pd.read_csv(folder / "history.csv")
    assert after["epoch"].tolist() == [1, 2, 3, 4, 5]  # continued, not restarted
    pd.testing.assert_frame_equal(after.iloc[:3], before)
    assert np.loadtxt(folder / "loss_train.txt").shape == (5,)
    # optimizer state came back too: 5 epochs x 8 steps in total
    model = keras.saving.load_model(folder / "final_weights.keras")
    assert int(model.optimizer.iterations.numpy()) == 5 * 8
    # only improvements were saved across the restart: accuracies in the names increase
    accuracies = [checkpoint_accuracy(p) for p in sorted(folder.glob("weights-improvement-*"))]
    assert accuracies == sorted(set(accuracies))
    assert "nothing to resume" in run_script(*args, "--resume").stdout


@pytest.mark.slow
def test_mirrored_strategy_over_two_logical_cpus(phantoms, tmp_path):
    result = run_script(
        "--projection",
        "MLO_R",
        "--data-root",
        phantoms,
        "--models-root",
        tmp_path,
        "--img-size",
        "64",
        "--epochs",
        "1",
        "--batch-size",
        "2",
        "--cpu-replicas",
        "2",
        "--no-cache",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "2 replica(s), global batch 4" in result.stdout
    assert "decoded images not cached" in result.stdout
    config = pd.read_json(tmp_path / "MLO_R_model" / "training_config.json", typ="series")
    assert config["replicas"] == 2 and not config["cached"]
    assert (tmp_path / "MLO_R_model" / "final_weights.keras").exists()


def test_flags_are_parsed_without_loading_tensorflow():
    # --help and a bad flag answer at once; TensorFlow loads only once training starts.
    check = (
        "import sys, Train_ResNet; "
        "arguments = Train_ResNet.parse_arguments(['--projection', 'CC_R']); "
        "assert arguments.learning_rate == 0.01, arguments; "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
    )
    result = subprocess.run(
        [sys.executable, "-c", check], cwd=MYPROJECT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_defaults_are_the_networks():
    # The script states its defaults without importing the network (which loads TensorFlow).
    assert Train_ResNet.BN_MOMENTUM == BN_MOMENTUM
    assert ASSUMED_WHEN_MISSING["bn_momentum"] == REFERENCE_BN_MOMENTUM
    arguments = Train_ResNet.parse_arguments(["--projection", "CC_R", "--optimizer", "adam"])
    assert arguments.img_size == 650 and arguments.batch_size == 4 and arguments.epochs == 100
    assert arguments.learning_rate == 0.001  # Adam's default; SGD's is 0.01


def test_run_folder_tells_fresh_interrupted_and_finished_runs(tmp_path, capsys):
    settings = {"projection": "CC_R", "epochs": 1}
    with RunFolder.open(tmp_path, "CC_R", settings) as run:
        assert run.state == FRESH and (run.folder / LOCK_FILE).is_file()
    assert not run.folder.exists()  # created, left empty: removed
    run.backup.mkdir(parents=True)
    with pytest.raises(DatasetError, match="interrupted run; pass --resume"):
        with RunFolder.open(tmp_path, "CC_R", settings):
            pass
    run.save_config()
    with RunFolder.open(tmp_path, "CC_R", settings, resume=True) as resumed:
        assert resumed.state == RESUME and resumed.saved == settings
    run.backup.rmdir()
    run.final_weights.write_bytes(b"a model")
    with RunFolder.open(tmp_path, "CC_R", settings, resume=True) as finished:
        assert finished.state == FINISHED and finished.finished
    assert "nothing to resume" in capsys.readouterr().out
    assert not (run.folder / LOCK_FILE).exists()


def test_augmentation_changes_images_but_keeps_shape():
    images = np.tile(np.linspace(0, 255, 64, dtype=np.float32), (2, 64, 1))[..., None]
    augmented = build_augmentation(seed=1)(images, training=True)
    assert augmented.shape == images.shape
    assert not np.allclose(augmented, images)
    # no flips: a left-dark/right-bright ramp stays that way round
    assert augmented[:, :, -8:].numpy().mean() > augmented[:, :, :8].numpy().mean()


def test_photometric_augmentation_changes_gray_levels_not_the_background():
    # a breast (right half, a ramp of gray levels) on a zero background
    images = np.zeros((8, 32, 32, 1), np.float32)
    images[:, :, 16:] = np.linspace(20, 235, 16, dtype=np.float32)[None, None, :, None]
    augmented = photometric_augmentation(images, seed=1).numpy()
    assert augmented.shape == images.shape
    assert (augmented[:, :, :16] == 0).all()  # background stays exactly 0
    breast = augmented[:, :, 17:]  # away from the blurred border
    assert breast.min() >= 1.0 and breast.max() <= 255.0  # breast never becomes background
    assert np.abs(breast - images[:, :, 17:]).mean() > 1.0  # gray levels changed ...
    assert len({round(float(b.mean()), 3) for b in breast}) == len(breast)  # ... per image
    # a monotone ramp stays (nearly) monotone: gamma and contrast keep the order of gray levels
    profile = augmented[:, 16, 18:-2, 0]
    assert (np.diff(profile, axis=1) > -12).all()


@pytest.mark.slow
def test_pipeline_with_photometric_augmentation(phantoms):
    augment = make_augmentation(seed=1, photometric=True)
    data = training_datasets(phantoms, "CC_R", (64, 64), 3, seed=1, augment=augment)
    images, _ = next(iter(data.train))
    assert images.shape == (3, 64, 64, 3)
    assert np.isfinite(images.numpy()).all()


def test_pipeline_shapes_and_steps_from_the_data(phantoms):
    data = training_datasets(phantoms, "CC_R", (64, 64), global_batch_size=3, seed=1)
    assert data.steps_per_epoch == 6 and data.validation_steps == 2  # ceil(16/3), ceil(4/3)
    images, one_hot = next(iter(data.train))
    assert images.shape == (3, 64, 64, 3) and one_hot.shape == (3, 4)
    assert len(list(data.validation)) == 2
    assert data.cached  # 20 small images: far below the in-memory cache limit


def test_ordinal_targets_are_soft_symmetric_and_centred():
    np.testing.assert_array_equal(target_matrix("onehot"), np.eye(4))
    soft = target_matrix("ordinal")
    np.testing.assert_allclose(soft.sum(axis=1), 1.0, rtol=1e-6)
    assert (np.argmax(soft, axis=1) == np.arange(4)).all()  # each class still its own mode
    for k in range(4):  # weight falls with the distance from the true class
        assert all(np.diff(soft[k, k:]) < 0) and all(np.diff(soft[k, : k + 1]) > 0)
    # the middle classes' targets keep their expected class (to 0.01); the ends are pulled inward
    expected = soft @ np.arange(4)
    np.testing.assert_allclose(expected[1:3], [1, 2], atol=0.01)
    assert 0 < expected[0] < 0.5 and 2.5 < expected[3] < 3
    np.testing.assert_allclose(soft, soft[::-1, ::-1], atol=1e-7)  # A<->D symmetric
    with pytest.raises(ValueError, match="unknown targets"):
        target_matrix("smooth")


@pytest.mark.slow
def test_pipeline_with_ordinal_targets_yields_soft_rows(phantoms):
    data = training_datasets(phantoms, "CC_R", (64, 64), 20, seed=1, targets="ordinal")
    _, targets = next(iter(data.train))
    rows = {tuple(np.round(row, 5)) for row in targets.numpy()}
    assert rows <= {tuple(np.round(row, 5)) for row in target_matrix("ordinal")}
    _, validation = next(iter(data.validation))  # validation scores against one-hot labels
    assert set(np.unique(validation.numpy())) <= {0.0, 1.0}


@pytest.mark.slow
def test_several_roots_and_projections_are_pooled(phantoms, tmp_path):
    # a second root with one projection only (real films: MLO)
    generate_dataset(tmp_path / "films", (2, 1, 0), (80, 64), seed=9)
    for projection in ("CC_R", "CC_L", "MLO_L"):
        for split in ("TrainingSet", "ValidationSet"):
            shutil.rmtree(tmp_path / "films" / split / projection)
    data = training_datasets([phantoms, tmp_path / "films"], ["CC_R", "MLO_R"], (64, 64), 4, seed=1)
    # 16 + 16 phantom images of CC_R and MLO_R, 2 of the films' MLO_R
    assert len(data.train_records) == 34 and len(data.validation_records) == 9
    with pytest.raises(DatasetError, match="no train split found"):
        training_datasets([tmp_path / "films"], ["CC_L"], (64, 64), 4)


@pytest.mark.slow
def test_view_agnostic_run_writes_one_network_to_every_projection(phantoms, tmp_path):
    arguments = ["--projection", "all", "--view-agnostic", "--data-root", str(phantoms)]
    arguments += ["--models-root", str(tmp_path), "--img-size", "64", "--epochs", "1"]
    assert Train_ResNet.main([*arguments, "--targets", "ordinal"]) == 0
    weights = None
    for projection in ("CC_R", "CC_L", "MLO_R", "MLO_L"):
        folder = tmp_path / f"{projection}_model"
        config = json.loads((folder / "training_config.json").read_text())
        assert config["projection"] == projection and config["view_agnostic"]
        assert config["targets"] == "ordinal" and config["train_images"] == 64  # 4 x 16
        model = keras.saving.load_model(folder / "final_weights.keras")
        if weights is None:
            weights = model.get_weights()
        for mine, first in zip(model.get_weights(), weights, strict=True):
            np.testing.assert_array_equal(mine, first)
    # --resume of a finished view-agnostic run: nothing to do, nothing overwritten
    assert Train_ResNet.main([*arguments, "--targets", "ordinal", "--resume"]) == 0
    with pytest.raises(SystemExit):  # one network for all: only with --projection all
        Train_ResNet.parse_arguments(["--projection", "CC_R", "--view-agnostic"])


def test_cache_is_skipped_when_decoded_images_exceed_the_limit(phantoms, monkeypatch):
    import breastdensity.training as training

    monkeypatch.setattr(training, "CACHE_LIMIT_BYTES", 20 * 64 * 64 * 4 - 1)
    assert not training_datasets(phantoms, "CC_R", (64, 64), global_batch_size=3).cached
    assert not training_datasets(phantoms, "CC_R", (32, 32), 3, cache=False).cached
    assert training_datasets(phantoms, "CC_R", (32, 32), 3).cached


class TestBadInput:
    def test_missing_dataset_folder(self, tmp_path):
        with pytest.raises(DatasetError, match="TrainingSet/CC_R/train does not exist"):
            training_datasets(tmp_path, "CC_R", (64, 64), 4)

    def test_missing_class_warns_and_empty_split_fails(self, phantoms, tmp_path):
        import shutil

        shutil.copytree(phantoms, tmp_path / "d")
        shutil.rmtree(tmp_path / "d" / "TrainingSet" / "CC_R" / "train" / "D")
        with pytest.warns(DataWarning, match="train/D is missing"):
            data = training_datasets(tmp_path / "d", "CC_R", (64, 64), 4)
        assert data.class_counts()["D"] == 0
        for label in "ABC":
            shutil.rmtree(tmp_path / "d" / "ValidationSet" / "CC_R" / "validation" / label)
        (
            tmp_path / "d" / "ValidationSet" / "CC_R" / "validation" / "D" / "va0001_D_CC_R.png"
        ).unlink(missing_ok=True)
        for image in (tmp_path / "d" / "ValidationSet" / "CC_R" / "validation" / "D").glob("*"):
            image.unlink()
        with pytest.raises(DatasetError, match="holds no image"), pytest.warns(DataWarning):
            training_datasets(tmp_path / "d", "CC_R", (64, 64), 4)

    def test_corrupt_non_image_and_too_small_files(self, phantoms, tmp_path):
        import shutil

        shutil.copytree(phantoms, tmp_path / "d")
        folder = tmp_path / "d" / "TrainingSet" / "CC_R" / "train" / "B"
        (folder / ".DS_Store").write_bytes(b"\0\0")
        (folder / "readme.txt").write_text("not an image")
        with pytest.warns(DataWarning, match="readme.txt"):
            training_datasets(tmp_path / "d", "CC_R", (64, 64), 4)
        (folder / "broken_B_CC_R.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
        with (
            pytest.raises(DatasetError, match="broken_B_CC_R.png: cannot decode"),
            pytest.warns(DataWarning),
        ):
            training_datasets(tmp_path / "d", "CC_R", (64, 64), 4)
        (folder / "broken_B_CC_R.png").unlink()
        write_png(folder / "tiny_B_CC_R.png", np.full((40, 30), 100, np.uint8))
        with (
            pytest.raises(
                DatasetError, match="tiny_B_CC_R.png: image of 40x30 pixels is too small"
            ),
            pytest.warns(DataWarning),
        ):
            training_datasets(tmp_path / "d", "CC_R", (64, 64), 4)


@pytest.mark.slow
def test_model_saved_for_shipping_has_no_optimizer_state(tmp_path):
    model = build_resnet(64)
    model.compile(keras.optimizers.Adam(), "categorical_crossentropy")
    # One step creates Adam's slot variables, which a full save would carry.
    model.fit(np.zeros((2, 64, 64, 3), np.float32), np.eye(4)[[0, 1]], verbose=0)
    full = save_model(model, tmp_path / "full.keras")
    bare = save_model(model, tmp_path / "bare.keras", include_optimizer=False)
    assert bare.stat().st_size < 0.5 * full.stat().st_size
    loaded = keras.saving.load_model(bare)
    assert getattr(loaded, "optimizer", None) is None
    np.testing.assert_allclose(
        loaded.predict(np.ones((1, 64, 64, 3)), verbose=0),
        model.predict(np.ones((1, 64, 64, 3)), verbose=0),
        atol=1e-6,
    )
