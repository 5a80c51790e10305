"""Stage 2: Prediction_ResNet.py."""

import shutil

import keras
import numpy as np
import pandas as pd
import Prediction_ResNet
import pytest
from conftest import untrained_model_set

from breastdensity.conventions import list_class_images, projection_test_folder
from breastdensity.data.phantoms import generate_dataset
from breastdensity.preprocessing import load_image


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """A phantom TestSet (3 subjects per class) and an untrained 64 px model per projection."""
    root = tmp_path_factory.mktemp("predict")
    generate_dataset(root / "data", (0, 0, 12), (80, 64), seed=8)
    untrained_model_set(root / "models")
    return root


def run(example, tmp_path, *extra):
    return Prediction_ResNet.main(
        [
            "--models-root",
            str(example / "models"),
            "--test-root",
            str(example / "data" / "TestSet"),
            "--output-dir",
            str(tmp_path / "Prediction"),
            *extra,
        ]
    )


@pytest.mark.slow
def test_single_projection_files(example, tmp_path, capsys):
    assert run(example, tmp_path, "--projection", "CC_R", "--batch-size", "5") == 0
    matrix = np.loadtxt(tmp_path / "Prediction" / "predictions_ccr.txt")
    assert matrix.shape == (12, 4)
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0, atol=1e-5)
    table = pd.read_csv(tmp_path / "Prediction" / "predictions_ccr.csv", dtype={"subject": str})
    records = list_class_images(projection_test_folder(example / "data" / "TestSet", "CC_R"))
    assert table["filename"].tolist() == [r.path.name for r in records]  # A -> D, then name
    assert table["true_label"].tolist() == sorted(table["true_label"])
    np.testing.assert_array_equal(table[["A", "B", "C", "D"]].to_numpy(), matrix)
    assert (table["predicted_label"] == np.array(list("ABCD"))[matrix.argmax(axis=1)]).all()
    assert table["subject"].str.startswith("te").all() and (table["projection"] == "CC_R").all()
    # same numbers as the shared single-image preprocessing + model
    model = keras.saving.load_model(example / "models" / "CC_R_model" / "final_weights.keras")
    expected = model.predict(np.stack([load_image(r.path, 64) for r in records[:3]]), verbose=0)
    np.testing.assert_allclose(matrix[:3], expected, atol=1e-5)
    output = capsys.readouterr().out
    assert "[CC_R] 12 images (A: 3, B: 3, C: 3, D: 3)" in output and "accuracy" in output


@pytest.mark.slow
def test_all_projections(example, tmp_path):
    assert run(example, tmp_path, "--projection", "all") == 0
    names = sorted(p.name for p in (tmp_path / "Prediction").iterdir())
    assert names == sorted(
        f"predictions_{s}.{e}" for s in ("ccr", "ccl", "mlor", "mlol") for e in ("txt", "csv")
    )


@pytest.fixture
def messy(example, tmp_path):
    """A copy of the example TestSet with a .DS_Store and a corrupt PNG in CC_R."""
    shutil.copytree(example / "data" / "TestSet", tmp_path / "TestSet")
    folder = tmp_path / "TestSet" / "CC_R" / "test" / "B"
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (folder / "te0099_B_CC_R.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR broken")
    return tmp_path / "TestSet"


def test_corrupt_image_stops_the_run_and_writes_nothing(example, messy, tmp_path, capsys):
    status = Prediction_ResNet.main(
        [
            "--projection",
            "all",
            "--models-root",
            str(example / "models"),
            "--test-root",
            str(messy),
            "--output-dir",
            str(tmp_path / "out"),
        ]
    )
    assert status == 2
    err = capsys.readouterr().err
    assert "te0099_B_CC_R.png: cannot decode" in err and "No prediction file was written" in err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


@pytest.mark.slow
def test_skip_bad_continues_and_names_the_file(example, messy, tmp_path, capsys):
    status = Prediction_ResNet.main(
        [
            "--projection",
            "CC_R",
            "--models-root",
            str(example / "models"),
            "--test-root",
            str(messy),
            "--output-dir",
            str(tmp_path / "out"),
            "--skip-bad",
        ]
    )
    assert status == 0
    captured = capsys.readouterr()
    assert "skipped" in captured.out and "te0099_B_CC_R.png" in captured.out
    assert ".DS_Store" in captured.err  # ignored with a warning
    table = pd.read_csv(tmp_path / "out" / "predictions_ccr.csv")
    assert len(table) == 12 and "te0099_B_CC_R.png" not in table["filename"].tolist()


def test_missing_folder_and_unfit_model_are_clear_errors(example, tmp_path, capsys):
    assert (
        Prediction_ResNet.main(
            [
                "--projection",
                "CC_R",
                "--models-root",
                str(example / "models"),
                "--test-root",
                str(tmp_path / "nothing"),
            ]
        )
        == 2
    )
    assert "does not exist" in capsys.readouterr().err
    three_classes = keras.Sequential(
        [
            keras.Input((64, 64, 3)),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    three_classes.save(tmp_path / "three.keras")
    assert (
        run(example, tmp_path, "--projection", "CC_R", "--model", str(tmp_path / "three.keras"))
        == 2
    )
    assert "3 outputs, expected 4 classes" in capsys.readouterr().err
    assert (
        run(example, tmp_path, "--projection", "CC_R", "--model", str(tmp_path / "no.keras")) == 2
    )
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "Prediction").exists()
    with pytest.raises(SystemExit):
        Prediction_ResNet.parse_arguments(["--projection", "all", "--model", "x.keras"])
