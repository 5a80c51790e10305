"""Stage 1, Train_ResNet.py, on bad input: refused with a message, never data lost.

Bad flags and a diverging loss, concurrent runs into one model folder, data that is not
there, --resume with other settings, from another working directory or with a damaged
configuration, an interrupted first run, a finished run resumed, a disk that is full
before training or fills up while a checkpoint is saved, --init-from (and the models it
cannot use).
"""

import errno
import json
import socket
import subprocess

import keras
import numpy as np
import pandas as pd
import pytest
import Train_ResNet
from conftest import contents

from breastdensity.conventions import best_checkpoint
from breastdensity.files import LOCK_FILE, hold_folder
from breastdensity.run_folder import describe_differences, setting_differences
from breastdensity.training import StopOnNonFiniteLoss, TrainingDiverged, make_optimizer


def tiny_model(image_size=64, num_classes=4, cardinality=1, bn_momentum=0.9):
    """Stands in for build_resnet where only the training loop matters (builds in milliseconds)."""
    inputs = keras.Input((image_size, image_size, 3))
    x = keras.layers.Conv2D(4, 3, strides=4)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes, activation="softmax")(x))


def use_tiny_model(monkeypatch):
    # where Train_ResNet.py's network comes from: build_backbone builds the ResNet with it
    import breastdensity.backbones

    monkeypatch.setattr(breastdensity.backbones, "build_resnet", tiny_model)


@pytest.fixture
def small_network(monkeypatch):
    """Train_ResNet.py trains ``tiny_model`` instead of the ResNet."""
    use_tiny_model(monkeypatch)


def train_args(data_root, models_root, *extra):
    """Train_ResNet.py's flags for one epoch of CC_R at 64 px."""
    return [
        "--projection",
        "CC_R",
        "--data-root",
        str(data_root),
        "--models-root",
        str(models_root),
        "--img-size",
        "64",
        "--epochs",
        "1",
        *map(str, extra),
    ]


def lock_file_of(folder, pid):
    """A lock file as a run with process ``pid`` on this host leaves it."""
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_FILE
    lock.write_text(f"pid={pid}\nhost={socket.gethostname()}\n")
    return lock


def interrupted(data_root, models_root, **settings):
    """A run folder as a killed run leaves it: backup/ and training_config.json."""
    folder = models_root / "CC_R_model"
    (folder / "backup").mkdir(parents=True)
    arguments = Train_ResNet.parse_arguments(train_args(data_root, models_root))
    config = Train_ResNet.resolved_settings(arguments, "CC_R", replicas=1)
    config.update(settings)
    (folder / "training_config.json").write_text(json.dumps(config))
    return folder


# ----------------------------------------------------------------------------
# Bad flags and a diverging loss
# ----------------------------------------------------------------------------


class TestFlagsAndDivergence:
    @pytest.mark.parametrize(
        "arguments",
        [
            ["--learning-rate", "0"],
            ["--learning-rate", "-1"],
            ["--learning-rate", "nan"],
            ["--learning-rate", "inf"],
            ["--cardinality", "3"],
            ["--seed", "-1"],
            ["--allow-changes"],
        ],
    )
    def test_bad_arguments_are_refused_before_any_folder(self, tmp_path, arguments, capsys):
        with pytest.raises(SystemExit):
            Train_ResNet.parse_arguments(train_args(tmp_path, tmp_path / "m", *arguments))
        assert arguments[0] in capsys.readouterr().err
        assert not (tmp_path / "m").exists()

    def test_learning_rate_is_recorded_as_given(self):
        arguments = Train_ResNet.parse_arguments(
            ["--projection", "CC_R", "--learning-rate", "1e-5"]
        )
        optimizer = make_optimizer("sgd", arguments.learning_rate)
        assert float(optimizer.learning_rate.numpy()) == pytest.approx(1e-5)

    def test_callback_stops_at_the_first_non_finite_loss(self):
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        model.compile("sgd", "mse")
        inputs = np.ones((8, 2), np.float32)
        inputs[5] = np.nan  # batch 3 of 4 (batch size 2)
        saved = []
        checkpoint = keras.callbacks.LambdaCallback(on_epoch_end=lambda *_: saved.append(1))
        with pytest.raises(TrainingDiverged, match="epoch 1, batch 3"):
            model.fit(
                inputs,
                np.zeros(8),
                batch_size=2,
                epochs=2,
                shuffle=False,
                verbose=0,
                callbacks=[StopOnNonFiniteLoss(), checkpoint],
            )
        assert saved == []  # no epoch end: nothing saved the diverged model

    def test_diverged_run_exits_non_zero_without_a_checkpoint(
        self, data, tmp_path, capsys, small_network
    ):
        status = Train_ResNet.main(
            train_args(data, tmp_path, "--learning-rate", "1e30", "--epochs", "2")
        )
        assert status == 3
        error = capsys.readouterr().err
        assert "diverged" in error and "--learning-rate" in error
        folder = tmp_path / "CC_R_model"
        assert not list(folder.glob("*.keras"))


# ----------------------------------------------------------------------------
# One run per model folder
# ----------------------------------------------------------------------------


class TestConcurrentRuns:
    def test_a_folder_held_by_a_live_run_is_refused(self, data, tmp_path, capsys):
        folder = tmp_path / "CC_R_model"
        other = subprocess.Popen(["sleep", "60"])
        try:
            lock_file_of(folder, other.pid)
            (folder / "history.csv").write_text("the other run's\n")
            before = contents(folder)
            assert Train_ResNet.main(train_args(data, tmp_path)) == 2
            error = capsys.readouterr().err
            assert f"process {other.pid}" in error and str(folder) in error
            assert "wait for that run" in error
            assert contents(folder) == before  # nothing of the other run touched
            # with --resume too: the lock comes before any other check
            assert Train_ResNet.main(train_args(data, tmp_path, "--resume")) == 2
            assert "in use by" in capsys.readouterr().err
        finally:
            other.kill()
            other.wait()

    def test_a_folder_held_in_this_process_is_refused(self, data, tmp_path, capsys):
        folder = tmp_path / "CC_R_model"
        with hold_folder(folder, "model folder"):
            assert Train_ResNet.main(train_args(data, tmp_path)) == 2
            assert "in use by" in capsys.readouterr().err
            assert [p.name for p in folder.iterdir()] == [LOCK_FILE]
        assert not (folder / LOCK_FILE).exists()

    def test_a_stale_lock_is_taken_over(self, data, tmp_path, small_network):
        finished = subprocess.Popen(["true"])
        finished.wait()
        folder = tmp_path / "CC_R_model"
        lock_file_of(folder, finished.pid)
        assert Train_ResNet.main(train_args(data, tmp_path)) == 0
        assert (folder / "final_weights.keras").is_file()
        assert not (folder / LOCK_FILE).exists()  # released at the end of the run

    def test_a_refused_run_leaves_no_empty_folder(self, tmp_path, capsys):
        assert Train_ResNet.main(train_args(tmp_path / "nothing", tmp_path)) == 2
        assert "does not exist" in capsys.readouterr().err
        assert not (tmp_path / "CC_R_model").exists()

    def test_data_error_leaves_no_empty_model_folder(self, tmp_path, capsys):
        assert Train_ResNet.main(train_args(tmp_path / "nothing", tmp_path)) == 2
        assert "does not exist" in capsys.readouterr().err
        assert not (tmp_path / "CC_R_model").exists()


# ----------------------------------------------------------------------------
# --resume: the settings, the images and the configuration
# ----------------------------------------------------------------------------


class TestResumeSettings:
    def test_changed_settings_are_refused_with_the_differences(self, data, tmp_path, capsys):
        folder = interrupted(
            data, tmp_path, image_size=[96, 96], optimizer="sgd", batch_size_per_replica=4
        )
        before = (folder / "training_config.json").read_text()
        status = Train_ResNet.main(
            train_args(data, tmp_path, "--resume", "--optimizer", "adam", "--batch-size", "8")
        )
        assert status == 2
        error = capsys.readouterr().err
        for line in (
            "image_size: [96, 96] -> [64, 64]",
            "optimizer: 'sgd' -> 'adam'",
            "batch_size_per_replica: 4 -> 8",
            "--allow-changes",
        ):
            assert line in error
        assert (folder / "training_config.json").read_text() == before
        assert not list(folder.glob("*.keras"))

    def test_same_settings_compare_equal(self, tmp_path):
        arguments = Train_ResNet.parse_arguments(train_args(".", tmp_path))
        settings = Train_ResNet.resolved_settings(arguments, "CC_R", replicas=1)
        saved = json.loads(json.dumps({**settings, "train_images": 9, "tensorflow": "x"}))
        assert setting_differences(saved, settings) == {}

    def test_config_without_bn_momentum_was_trained_with_the_references(self, tmp_path):
        # Resuming such a run with the reference's 0.99 is no change, with today's default it is one.
        arguments = Train_ResNet.parse_arguments(train_args(".", tmp_path))
        settings = Train_ResNet.resolved_settings(arguments, "CC_R", replicas=1)
        assert settings["bn_momentum"] == 0.9
        old = {key: value for key, value in settings.items() if key != "bn_momentum"}
        assert setting_differences(old, settings) == {"bn_momentum": (0.99, 0.9)}
        reference = {**settings, "bn_momentum": 0.99}
        assert setting_differences(old, reference) == {}

    def test_allow_changes_records_both(self, data, tmp_path, small_network):
        folder = interrupted(data, tmp_path, learning_rate=0.5)
        status = Train_ResNet.main(
            train_args(data, tmp_path, "--resume", "--allow-changes", "--learning-rate", "0.01")
        )
        assert status == 0
        config = json.loads((folder / "training_config.json").read_text())
        assert config["learning_rate"] == 0.01
        assert config["changes_on_resume"] == [
            {"setting": "learning_rate", "before": 0.5, "after": 0.01}
        ]

    def test_interrupted_first_run_points_to_resume(self, data, tmp_path, capsys):
        folder = tmp_path / "CC_R_model"
        (folder / "logs").mkdir(parents=True)
        (folder / "training_config.json").write_text("{}")
        assert Train_ResNet.main(train_args(data, tmp_path)) == 2
        assert "--resume" in capsys.readouterr().err


class TestResumeData:
    def test_same_relative_data_root_from_another_directory_is_refused(
        self, data, tmp_path, monkeypatch, capsys
    ):
        first, second = tmp_path / "first", tmp_path / "second"
        first.mkdir()
        second.mkdir()
        (first / "data").symlink_to(data)
        # Other data: one validation image fewer.
        import shutil

        shutil.copytree(data, second / "data")
        next((second / "data" / "ValidationSet" / "CC_R").rglob("*.png")).unlink()
        models = tmp_path / "models"
        monkeypatch.chdir(first)
        folder = interrupted("data", models)
        config = json.loads((folder / "training_config.json").read_text())
        assert config["data_root"] == "data"
        assert config["data_root_resolved"] == [str(data.resolve())]
        before = (folder / "training_config.json").read_text()

        monkeypatch.chdir(second)
        assert Train_ResNet.main(train_args("data", models, "--resume")) == 2
        error = capsys.readouterr().err
        assert f"data_root_resolved: ['{data.resolve()}'] -> ['{(second / 'data').resolve()}']" in (
            error
        )
        assert "--data-root" in error and "--allow-changes" in error
        assert (folder / "training_config.json").read_text() == before

    def test_changed_images_under_the_same_root_are_refused(
        self, data, tmp_path, small_network, capsys
    ):
        import shutil

        shutil.copytree(data, tmp_path / "d")
        models = tmp_path / "models"
        assert Train_ResNet.main(train_args(tmp_path / "d", models, "--epochs", "1")) == 0
        folder = models / "CC_R_model"
        config = json.loads((folder / "training_config.json").read_text())
        assert config["data_fingerprint"]["train"]["files"] == 4
        assert config["data_fingerprint"]["validation"]["files"] == 4
        # Make it an interrupted run again, then change the data.
        (folder / "final_weights.keras").unlink()
        (folder / "backup").mkdir()
        image = next((tmp_path / "d" / "TrainingSet" / "CC_R" / "train" / "A").glob("*.png"))
        image.rename(image.with_name("renamed_A_CC_R.png"))
        assert Train_ResNet.main(train_args(tmp_path / "d", models, "--resume")) == 2
        error = capsys.readouterr().err
        assert "data_fingerprint: train 4 files" in error and "--allow-changes" in error
        assert not (folder / "final_weights.keras").exists()

    def test_a_configuration_without_the_resolved_data_root_still_resumes(
        self, data, tmp_path, small_network
    ):
        folder = interrupted(data, tmp_path)
        config = json.loads((folder / "training_config.json").read_text())
        del config["data_root_resolved"]
        (folder / "training_config.json").write_text(json.dumps(config))
        assert Train_ResNet.main(train_args(data, tmp_path, "--resume")) == 0
        config = json.loads((folder / "training_config.json").read_text())
        assert "changes_on_resume" not in config  # unknown is not a change
        assert config["data_root_resolved"] == [str(data.resolve())]
        assert config["data_fingerprint"]["train"]["files"] == 4

    def test_fingerprint_differences_read_as_a_setting(self, tmp_path):
        arguments = Train_ResNet.parse_arguments(train_args(".", tmp_path))
        settings = Train_ResNet.resolved_settings(arguments, "CC_R", replicas=1)
        now = {**settings, "data_fingerprint": {"train": {"files": 3, "names_sha256": "ab" * 32}}}
        before = {
            **settings,
            "data_fingerprint": {"train": {"files": 4, "names_sha256": "cd" * 32}},
        }
        differences = setting_differences(before, now)
        assert list(differences) == ["data_fingerprint"]
        assert "train 4 files (names cdcdcdcdcdcd) -> train 3 files (names abababababab)" in (
            describe_differences(differences)
        )
        assert setting_differences(settings, now) == {}  # not recorded: unknown


class TestDamagedConfiguration:
    @pytest.mark.parametrize(
        ("text", "reason"),
        [
            ("not json at all", "Expecting value"),
            ('["a", "list"]', "JSON list, not an object"),
            ('{"projection": "CC_R", "image_si', "Unterminated string"),
            ("", "Expecting value"),
        ],
    )
    def test_unreadable_configuration_names_the_file(self, data, tmp_path, capsys, text, reason):
        folder = interrupted(data, tmp_path)
        (folder / "training_config.json").write_text(text)
        assert Train_ResNet.main(train_args(data, tmp_path, "--resume")) == 2
        error = capsys.readouterr().err
        assert str(folder / "training_config.json") in error and reason in error
        assert "restore it" in error and "--allow-changes" in error
        assert (folder / "training_config.json").read_text() == text  # left as it was

    def test_missing_configuration_needs_allow_changes(self, data, tmp_path, capsys, small_network):
        folder = interrupted(data, tmp_path)
        (folder / "training_config.json").unlink()
        assert Train_ResNet.main(train_args(data, tmp_path, "--resume")) == 2
        assert "no training_config.json" in capsys.readouterr().err
        assert Train_ResNet.main(train_args(data, tmp_path, "--resume", "--allow-changes")) == 0
        config = json.loads((folder / "training_config.json").read_text())
        changed = {change["setting"]: change["before"] for change in config["changes_on_resume"]}
        assert changed["epochs"] is None and changed["optimizer"] is None


class TestFinishedRun:
    def finished(self, data_root, models_root, **settings):
        folder = interrupted(data_root, models_root, **settings)
        (folder / "backup").rmdir()
        tiny_model().save(folder / "final_weights.keras")
        return folder

    def test_changed_settings_say_the_run_is_finished(self, data, tmp_path, capsys):
        folder = self.finished(data, tmp_path)
        before = contents(folder)
        assert Train_ResNet.main(train_args(data, tmp_path, "--resume", "--epochs", "5")) == 2
        error = capsys.readouterr().err
        assert "holds a finished run" in error and "epochs: 1 -> 5" in error
        assert "another --models-root" in error and "--init-from" in error
        assert "--resume --allow-changes" in error
        assert contents(folder) == before
        # --allow-changes: the finished model is left as it is, the command goes on
        assert (
            Train_ResNet.main(
                train_args(data, tmp_path, "--resume", "--epochs", "5", "--allow-changes")
            )
            == 0
        )
        assert "left as it is" in capsys.readouterr().out
        assert contents(folder) == before

    def test_same_settings_have_nothing_to_resume(self, data, tmp_path, capsys):
        folder = self.finished(data, tmp_path)
        assert Train_ResNet.main(train_args(data, tmp_path, "--resume")) == 0
        assert "nothing to resume" in capsys.readouterr().out
        assert not (folder / LOCK_FILE).exists()


# ----------------------------------------------------------------------------
# Full disk, before training and while saving
# ----------------------------------------------------------------------------


def full_disk_on(monkeypatch, names):
    """Model saves to files whose name contains one of ``names`` write half a file, then fail."""
    save = keras.Model.save

    def failing_save(model, path, *args, **kwargs):
        if any(name in str(path) for name in names):
            with open(path, "wb") as stream:
                stream.write(b"PK\x03\x04 half a model")
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return save(model, path, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "save", failing_save)


class TestFullDisk:
    def test_full_disk_is_found_before_training(self, data, tmp_path, monkeypatch, capsys):
        import breastdensity.files

        def full(path):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))

        monkeypatch.setattr(breastdensity.files, "_probe", full)
        assert Train_ResNet.main(train_args(data, tmp_path / "m")) == 2
        assert "No space left on device" in capsys.readouterr().err
        assert not (tmp_path / "m").exists()

    def test_full_disk_during_a_checkpoint_leaves_no_cut_file(
        self, data, tmp_path, monkeypatch, capsys, small_network
    ):
        full_disk_on(monkeypatch, ["weights-improvement"])
        assert Train_ResNet.main(train_args(data, tmp_path)) == 2
        error = capsys.readouterr().err
        folder = tmp_path / "CC_R_model"
        assert f"cannot write in the model folder {folder}" in error
        assert "No space left on device" in error and "--resume" in error
        assert not list(folder.rglob("*.keras")) and not list(folder.rglob(".*.keras"))
        assert not (folder / LOCK_FILE).exists()

    def test_full_disk_during_the_final_save_can_be_resumed(
        self, data, tmp_path, monkeypatch, capsys, small_network
    ):
        full_disk_on(monkeypatch, ["final_weights"])
        assert Train_ResNet.main(train_args(data, tmp_path, "--epochs", "2")) == 2
        assert "No space left on device" in capsys.readouterr().err
        folder = tmp_path / "CC_R_model"
        assert not list(folder.glob("*final_weights*"))
        assert (folder / "backup").is_dir()  # kept: the trained epochs are not lost
        monkeypatch.undo()
        use_tiny_model(monkeypatch)
        assert Train_ResNet.main(train_args(data, tmp_path, "--epochs", "2", "--resume")) == 0
        assert (folder / "final_weights.keras").is_file() and not (folder / "backup").exists()
        assert pd.read_csv(folder / "history.csv")["epoch"].tolist() == [1, 2]

    def test_history_files_are_replaced_whole(self, tmp_path, monkeypatch):
        from breastdensity import training

        rows = [{"epoch": 1, "loss": 1.0, "acc": 0.5, "val_loss": 1.1, "val_acc": 0.25}]
        training.write_history(tmp_path, rows)
        before = (tmp_path / "loss_train.txt").read_text()

        def full(path, values):
            with open(path, "w") as stream:
                stream.write("1.0")
            raise OSError(errno.ENOSPC, "No space left on device", str(path))

        monkeypatch.setattr(training.np, "savetxt", full)
        with pytest.raises(OSError, match="No space left"):
            training.write_history(tmp_path, [*rows, {**rows[0], "epoch": 2}])
        assert (tmp_path / "loss_train.txt").read_text() == before
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


# ----------------------------------------------------------------------------
# --init-from, and the models it cannot use
# ----------------------------------------------------------------------------


class TestInitFrom:
    @pytest.mark.slow
    def test_init_from_starts_from_the_best_checkpoint_of_another_run(
        self, data, tmp_path, small_network, capsys
    ):
        first = tmp_path / "first"
        assert Train_ResNet.main(train_args(data, first, "--optimizer", "adam")) == 0
        source = best_checkpoint(first / "CC_R_model")
        # A learning rate of 1e-12 leaves the weights where they started: at the
        # first run's, not at a new random draw.
        second = tmp_path / "second"
        arguments = ["--optimizer", "adam", "--learning-rate", "1e-12", "--seed", "7"]
        assert Train_ResNet.main(train_args(data, second, *arguments, "--init-from", first)) == 0
        assert f"weights initialised from {source}" in capsys.readouterr().out
        started = keras.saving.load_model(source, compile=False).get_weights()
        ended = keras.saving.load_model(second / "CC_R_model" / "final_weights.keras").get_weights()
        for before, after in zip(started, ended, strict=True):
            np.testing.assert_allclose(after, before, atol=1e-6)
        config = json.loads((second / "CC_R_model" / "training_config.json").read_text())
        assert config["initialised_from"] == str(first.resolve())

    def test_init_from_a_folder_without_checkpoints_is_a_clear_error(self, data, tmp_path):
        (tmp_path / "empty" / "CC_R_model").mkdir(parents=True)
        arguments = train_args(data, tmp_path / "out", "--init-from", tmp_path / "empty")
        with pytest.raises(SystemExit, match="--init-from: no checkpoint in .*CC_R_model"):
            Train_ResNet.main(arguments)

    def source(self, root, model):
        folder = root / "CC_R_model"
        folder.mkdir(parents=True)
        model.save(folder / "final_weights.keras")
        return folder / "final_weights.keras"

    def test_a_model_with_a_lambda_layer_is_not_loaded(self, data, tmp_path, capsys, small_network):
        inputs = keras.Input((64, 64, 3))
        outputs = keras.layers.Dense(4)(keras.layers.Lambda(lambda x: x * 2.0)(inputs))
        model_file = self.source(tmp_path / "src", keras.Model(inputs, outputs))
        arguments = train_args(data, tmp_path / "out", "--init-from", tmp_path / "src")
        assert Train_ResNet.main(arguments) == 2
        error = capsys.readouterr().err
        assert str(model_file) in error and "Lambda" in error
        assert not (tmp_path / "out" / "CC_R_model").exists()

    def test_a_truncated_model_file_is_named(self, data, tmp_path, capsys, small_network):
        model_file = self.source(tmp_path / "src", tiny_model())
        model_file.write_bytes(model_file.read_bytes()[: model_file.stat().st_size // 2])
        arguments = train_args(data, tmp_path / "out", "--init-from", tmp_path / "src")
        assert Train_ResNet.main(arguments) == 2
        error = capsys.readouterr().err
        assert str(model_file) in error and "copy or train it again" in error

    def test_an_incompatible_model_is_a_clear_error(self, data, tmp_path, capsys, small_network):
        other = keras.Sequential(
            [keras.Input((64, 64, 3)), keras.layers.Flatten(), keras.layers.Dense(4)]
        )
        model_file = self.source(tmp_path / "src", other)
        arguments = train_args(data, tmp_path / "out", "--init-from", tmp_path / "src")
        assert Train_ResNet.main(arguments) == 2
        error = capsys.readouterr().err
        assert str(model_file) in error and "does not fit the network" in error
        assert "weight arrays" in error or "weight array 1" in error


def test_history_txt_files_still_hold_one_value_per_epoch(tmp_path):
    from breastdensity.training import write_history

    rows = [{"epoch": e, "loss": 1.0, "acc": 0.5, "val_loss": 1.0, "val_acc": 0.5} for e in (1, 2)]
    write_history(tmp_path, rows)
    assert np.loadtxt(tmp_path / "acc_val.txt").shape == (2,)
