"""Stage 2 and every model loader against bad input: model files, checkpoints, test images.

Model files that are not models, are too large or give non-finite probabilities; a model
applied to another projection's images; an unwritable output folder; and the provenance
every prediction file records of its model. Each case must end in the project's error naming
the file and saying what to do (exit status 2 for the script), never in a traceback, an
allocation of gigabytes or a silent result.
"""

import hashlib
import json
import shutil
import zipfile

import h5py
import keras
import numpy as np
import pandas as pd
import Prediction_ResNet
import pytest

import breastdensity.inference as inference
from breastdensity.conventions import DatasetError, best_checkpoint, list_class_images
from breastdensity.data.phantoms import generate_dataset
from breastdensity.files import MAX_IMAGE_PIXELS
from breastdensity.inference import check_projection_match, load_keras_file, load_model
from breastdensity.predictions import PROVENANCE_COLUMNS, csv_path
from breastdensity.preprocessing import ImageReadError, read_grayscale


def small_classifier(size=64):
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(4, 3, strides=4)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(4, activation="softmax")(x))


@pytest.fixture(scope="module")
def good_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "final_weights.keras"
    keras.utils.set_random_seed(0)
    small_classifier().save(path)
    return path


@pytest.fixture(scope="module")
def test_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    generate_dataset(root, (0, 0, 4), (64, 64), seed=5)
    return root / "TestSet"


def predict(test_root, output_dir, *extra):
    arguments = ["--test-root", test_root, "--output-dir", output_dir, "--projection", "CC_R"]
    return Prediction_ResNet.main([*map(str, arguments), *map(str, extra)])


def predict_with(models_root, test_root, output_dir, *extra):
    """Prediction_ResNet.py with a --models-root and the projection left to ``extra``."""
    return Prediction_ResNet.main(
        [
            "--models-root",
            str(models_root),
            "--test-root",
            str(test_root),
            "--output-dir",
            str(output_dir),
            *map(str, extra),
        ]
    )


def rezip(source, target, replace=None, extra=None, compression=zipfile.ZIP_STORED):
    """A copy of the .keras archive ``source`` with members replaced or added."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w", compression) as new:
        for info in old.infolist():
            data = (replace or {}).get(info.filename, old.read(info.filename))
            new.writestr(info.filename, data)
        for name, data in (extra or {}).items():
            new.writestr(name, data)
    return target


# ----------------------------------------------------------------------------
# Model files: checked before Keras opens them
# ----------------------------------------------------------------------------


class TestModelFiles:
    def test_a_good_model_loads(self, good_model):
        assert load_model(good_model).output_shape == (None, 4)

    def test_zip_bomb_is_refused_before_inflating(self, good_model, tmp_path):
        # 200 MB of zeros deflate to about 200 KB: the archive declares what it would take
        bomb = rezip(
            good_model,
            tmp_path / "bomb.keras",
            extra={"assets/padding.bin": bytes(200 * 2**20)},
            compression=zipfile.ZIP_DEFLATED,
        )
        assert bomb.stat().st_size < 2 * 2**20
        with pytest.raises(DatasetError, match=r"bomb\.keras: the file declares .* packed") as e:
            load_model(bomb)
        assert "trust" in str(e.value)

    def test_hdf5_bomb_is_refused_before_reading(self, good_model, tmp_path):
        # A weights file whose dataset declares 4 GB that are never stored (HDF5 fills them in)
        weights = tmp_path / "model.weights.h5"
        with zipfile.ZipFile(good_model) as archive:
            weights.write_bytes(archive.read("model.weights.h5"))
        with h5py.File(weights, "a") as store:
            store.create_dataset("huge", shape=(2**30,), dtype="float32", chunks=(2**20,))
        bomb = rezip(
            good_model, tmp_path / "bomb.keras", replace={"model.weights.h5": weights.read_bytes()}
        )
        assert bomb.stat().st_size < 2**20
        with pytest.raises(DatasetError, match=r"bomb\.keras: the file declares 4,096 MB"):
            load_keras_file(bomb)

    def test_model_larger_than_the_memory_is_refused(self, good_model, monkeypatch):
        monkeypatch.setattr(inference, "_available_memory", lambda: 2**10)  # 1 KB
        with pytest.raises(DatasetError, match="more than half of the memory available"):
            load_model(good_model)

    def test_truncated_model(self, good_model, tmp_path):
        truncated = tmp_path / "weights-improvement-03-0.50.keras"
        truncated.write_bytes(good_model.read_bytes()[: good_model.stat().st_size // 2])
        with pytest.raises(DatasetError, match=f"{truncated}: not a Keras model file"):
            load_model(truncated)

    def test_archive_without_a_keras_config(self, tmp_path):
        other = tmp_path / "other.keras"
        with zipfile.ZipFile(other, "w") as archive:
            archive.writestr("notes.txt", "hello")
        with pytest.raises(DatasetError, match="no config.json"):
            load_model(other)

    def test_lambda_layer_is_refused(self, tmp_path):
        inputs = keras.Input((32, 32, 3))
        shifted = keras.layers.Lambda(lambda x: x + 1.0)(inputs)
        pooled = keras.layers.GlobalAveragePooling2D()(shifted)
        path = tmp_path / "lambda.keras"
        keras.Model(inputs, keras.layers.Dense(4, activation="softmax")(pooled)).save(path)
        with pytest.raises(DatasetError, match=r"lambda\.keras: .*Lambda layer"):
            load_model(path)

    def test_model_without_a_fixed_input_size(self, test_root, tmp_path, capsys):
        inputs = keras.Input((None, None, 3))
        pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs))
        path = tmp_path / "any_size.keras"
        keras.Model(inputs, keras.layers.Dense(4, activation="softmax")(pooled)).save(path)
        assert predict(test_root, tmp_path / "P", "--model", path) == 2
        error = capsys.readouterr().err
        assert f"{path}: the model has no fixed input size" in error
        assert "Traceback" not in error and not (tmp_path / "P").exists()

    def test_unreadable_model_file_and_folder_given_as_model(self, data, tmp_path, capsys):
        (tmp_path / "random.keras").write_bytes(np.random.default_rng(0).bytes(2000))
        arguments = ("--projection", "CC_R", "--model")
        assert (
            predict_with(
                tmp_path, data / "TestSet", tmp_path / "P", *arguments, tmp_path / "random.keras"
            )
            == 2
        )
        error = capsys.readouterr().err
        assert "random.keras" in error and "not a Keras model file" in error
        assert "not found" not in error.lower()
        assert predict_with(tmp_path, data / "TestSet", tmp_path / "P", *arguments, tmp_path) == 2
        assert "is a folder" in capsys.readouterr().err

    def test_prediction_refuses_non_finite_probabilities(self, data, tmp_path, capsys):
        nan_model = keras.Sequential(
            [
                keras.Input((64, 64, 3)),
                keras.layers.GlobalAveragePooling2D(),
                keras.layers.Dense(
                    4, "softmax", kernel_initializer=keras.initializers.Constant(np.nan)
                ),
            ]
        )
        nan_model.save(tmp_path / "nan.keras")
        status = predict_with(
            tmp_path,
            data / "TestSet",
            tmp_path / "P",
            "--projection",
            "CC_R",
            "--model",
            tmp_path / "nan.keras",
        )
        assert status == 2
        error = capsys.readouterr().err
        assert "nan.keras" in error and "not finite" in error
        assert not (tmp_path / "P").exists()


class TestCheckpointNames:
    def test_a_stray_file_beside_the_checkpoints_is_named_and_ignored(
        self, good_model, test_root, tmp_path, capsys
    ):
        folder = tmp_path / "models" / "CC_R_model"
        folder.mkdir(parents=True)
        shutil.copy(good_model, folder / "weights-improvement-02-0.50.keras")
        (folder / "weights-improvement-01-abc.keras").write_bytes(b"not a model")
        (folder / "training_config.json").write_text(json.dumps({"projection": "CC_R"}))
        with pytest.warns(UserWarning, match="01-abc.keras: not named as training names"):
            assert best_checkpoint(folder).name == "weights-improvement-02-0.50.keras"
        assert predict(test_root, tmp_path / "P", "--models-root", tmp_path / "models") == 0
        captured = capsys.readouterr()
        assert "weights-improvement-01-abc.keras: not named" in captured.err
        assert "weights-improvement-02-0.50.keras" in captured.out


# ----------------------------------------------------------------------------
# Test images: one bad file is that file's error
# ----------------------------------------------------------------------------


def png_header(width, height):
    """The first chunk of a PNG that declares ``width`` x ``height`` pixels (and nothing more)."""
    import struct
    import zlib

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + header
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(header))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
    )


class TestImages:
    def test_decompression_bomb_png_is_refused_from_its_header(self, tmp_path):
        bomb = tmp_path / "bomb_A_CC_R.png"
        bomb.write_bytes(png_header(40000, 40000))
        with pytest.raises(ImageReadError, match=f"{bomb}: the PNG declares 40000 x 40000"):
            read_grayscale(bomb)
        assert 40000 * 40000 > MAX_IMAGE_PIXELS > 6000 * 6000

    def test_multi_page_tiff_is_refused(self, tmp_path):
        import cv2

        pages = [np.full((16, 16), value, np.uint8) for value in (10, 200)]
        path = tmp_path / "two_pages.tif"
        assert cv2.imwritemulti(str(path), pages)
        with pytest.raises(ImageReadError, match="several pages"):
            read_grayscale(path)
        single = tmp_path / "one_page.tif"
        assert cv2.imwrite(str(single), pages[0])
        assert read_grayscale(single).shape == (16, 16)

    def test_bomb_in_the_test_set(self, good_model, test_root, tmp_path, capsys):
        images = tmp_path / "TestSet"
        shutil.copytree(test_root, images)
        bomb = images / "CC_R" / "test" / "A" / "zz0001_A_CC_R.png"
        bomb.write_bytes(png_header(40000, 40000))
        assert predict(images, tmp_path / "P", "--model", good_model) == 2
        error = capsys.readouterr().err
        assert f"{bomb}: the PNG declares 40000 x 40000 pixels" in error and "--skip-bad" in error
        assert not (tmp_path / "P").exists()
        assert predict(images, tmp_path / "P", "--model", good_model, "--skip-bad") == 0
        output = capsys.readouterr().out
        assert f"skipped {bomb}: the PNG declares" in output

    def test_any_failure_while_reading_names_the_file(
        self, good_model, test_root, tmp_path, capsys, monkeypatch
    ):
        import breastdensity.preprocessing as preprocessing

        def failing_resize(image, size):
            raise RuntimeError("a library failed")

        monkeypatch.setattr(preprocessing, "resize", failing_resize)
        assert predict(test_root, tmp_path / "P", "--model", good_model) == 2
        error = capsys.readouterr().err
        assert "_CC_R.png: cannot read the image (RuntimeError: a library failed)" in error


# ----------------------------------------------------------------------------
# Which model, for which projection
# ----------------------------------------------------------------------------


class TestProvenanceAndProjection:
    def test_prediction_files_record_the_model(self, data, models, tmp_path):
        assert (
            predict_with(models / "set1", data / "TestSet", tmp_path / "P", "--projection", "CC_R")
            == 0
        )
        table = pd.read_csv(csv_path(tmp_path / "P", "CC_R"))
        model_file = models / "set1" / "CC_R_model" / "final_weights.keras"
        assert set(PROVENANCE_COLUMNS) <= set(table.columns)
        assert ((tmp_path / "P" / table["model"]).map(lambda p: p.resolve()) == model_file).all()
        assert (table["model_sha256"] == hashlib.sha256(model_file.read_bytes()).hexdigest()).all()
        assert (table["model_projection"] == "CC_R").all() and (table["projection"] == "CC_R").all()

    def test_model_applied_to_another_projection(self, data, models, tmp_path, capsys):
        cc_r = models / "set1" / "CC_R_model" / "final_weights.keras"
        arguments = ("--projection", "CC_L", "--model", cc_r)
        assert predict_with(models, data / "TestSet", tmp_path / "P", *arguments) == 2
        error = capsys.readouterr().err
        assert "trained on CC_R" in error and "--allow-projection-mismatch" in error
        assert not (tmp_path / "P").exists()
        cc_l_images = list_class_images(data / "TestSet" / "CC_L" / "test")
        assert check_projection_match(cc_r, cc_l_images, "CC_L", allow_mismatch=True) == "CC_R"

    def test_images_of_another_projection(self, data, models):
        cc_r_images = list_class_images(data / "TestSet" / "CC_R" / "test")
        mlo_l = models / "set1" / "MLO_L_model" / "final_weights.keras"
        flag = "allow_projection_mismatch=True"  # as the notebook names it
        with pytest.raises(DatasetError, match=f"4 of 4 images are named as CC_R.*{flag}"):
            check_projection_match(mlo_l, cc_r_images, "MLO_L", flag=flag)


# ----------------------------------------------------------------------------
# The output folder
# ----------------------------------------------------------------------------


class TestOutputFolder:
    def test_unwritable_prediction_folder_is_found_before_predicting(
        self, data, models, tmp_path, monkeypatch, capsys
    ):
        def never(*args, **kwargs):
            raise AssertionError("predicted although the output folder is unwritable")

        monkeypatch.setattr(inference, "predict_records", never)
        (tmp_path / "file").write_text("")
        status = predict_with(
            models / "set1", data / "TestSet", tmp_path / "file" / "P", "--projection", "all"
        )
        assert status == 2 and "cannot write" in capsys.readouterr().err
