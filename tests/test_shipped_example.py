"""The shipped example: models, TestSet and results, and the main job that regenerates them."""

import json
import os
import shutil

import keras
import numpy as np
import pandas as pd
import Prediction_ResNet
import pytest
import Run_Example
from conftest import MYPROJECT

from breastdensity.conventions import PROJECTIONS, SHORT_NAMES, default_model_path

SHIPPED = [MYPROJECT / f"{p}_model" for p in PROJECTIONS]


@pytest.mark.parametrize("projection", PROJECTIONS)
def test_shipped_model_is_small_loadable_and_documented(projection):
    folder = MYPROJECT / f"{projection}_model"
    model_file = default_model_path(MYPROJECT, projection)
    # one model per folder: a best checkpoint, or the final weights (what cross-validation scored)
    assert [p.name for p in folder.glob("*.keras")] == [model_file.name]
    assert model_file.stat().st_size <= 12 * 1024 * 1024
    model = keras.saving.load_model(model_file)
    assert getattr(model, "optimizer", None) is None  # saved without optimizer state
    config = json.loads((folder / "training_config.json").read_text())
    assert model.input_shape == (None, *config["image_size"], 3)
    assert config["projection"] == projection  # stages 2-4 check it
    # the model card describes what is shipped
    card = (MYPROJECT.parent / "docs" / "MODELS.md").read_text()
    assert f"{config['image_size'][0]} × {config['image_size'][1]}" in card
    assert "Suckling" in card  # the MIAS licence asks for its citation
    for name in [
        "loss_train.txt",
        "acc_train.txt",
        "loss_val.txt",
        "acc_val.txt",
        "training_curves.png",
        "training_config.json",
        "history.csv",
    ]:
        assert (folder / name).is_file(), name


def test_everything_shipped_fits_the_budget():
    total = sum(
        path.stat().st_size
        for folder in [
            "TestSet",
            "DenseMasks",
            "Prediction",
            "MAPS",
            "Explanations",
            *[f.name for f in SHIPPED],
        ]
        for path in (MYPROJECT / folder).rglob("*")
        if path.is_file()
    )
    assert total <= 70 * 1024 * 1024


@pytest.mark.slow
def test_shipped_models_reproduce_the_shipped_predictions(tmp_path):
    status = Prediction_ResNet.main(
        [
            "--projection",
            "all",
            "--models-root",
            str(MYPROJECT),
            "--test-root",
            str(MYPROJECT / "TestSet"),
            "--output-dir",
            str(tmp_path),
        ]
    )
    assert status == 0
    # Tolerances that hold on any hardware: a GPU's TF32 or another CPU's kernels
    # move probabilities by ~1e-4, and a label may flip only where two classes tie.
    tolerance = 2e-3
    for projection in PROJECTIONS:
        name = f"predictions_{SHORT_NAMES[projection]}"
        fresh_probabilities = np.loadtxt(tmp_path / f"{name}.txt")
        shipped_probabilities = np.loadtxt(MYPROJECT / "Prediction" / f"{name}.txt")
        np.testing.assert_allclose(fresh_probabilities, shipped_probabilities, atol=tolerance)
        fresh = pd.read_csv(tmp_path / f"{name}.csv")
        shipped = pd.read_csv(MYPROJECT / "Prediction" / f"{name}.csv")
        assert fresh["filename"].tolist() == shipped["filename"].tolist()
        top_two = np.sort(shipped_probabilities, axis=1)[:, -2:]
        clear = top_two[:, 1] - top_two[:, 0] > 2 * tolerance
        assert (fresh["predicted_label"] == shipped["predicted_label"])[clear].all()


@pytest.mark.slow
def test_main_job_on_a_reduced_test_set(tmp_path, monkeypatch, capsys):
    """Stages 2 -> 4 as `make demo` runs them, on one subject per class."""
    reduced = tmp_path / "TestSet"
    manifest = pd.read_csv(MYPROJECT / "manifest.csv", dtype={"subject": str})
    subjects = manifest.groupby("class")["subject"].first().tolist()
    for row in manifest[manifest["subject"].isin(subjects)].itertuples():
        target = tmp_path / row.file
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(MYPROJECT / row.file, target)
    monkeypatch.chdir(MYPROJECT)
    status = Run_Example.main(
        [
            "--test-root",
            str(reduced),
            "--predictions-dir",
            str(tmp_path / "Prediction"),
            "--maps-dir",
            str(tmp_path / "MAPS"),
            "--executed-dir",
            str(tmp_path / "executed"),
            "--n-bootstrap",
            "50",
            "--compare-max-images",
            "0",
        ]
    )
    assert status == 0
    metrics = pd.read_csv(tmp_path / "Prediction" / "metrics.csv", index_col=0)
    assert metrics.loc["total", "n"] == 4
    for projection in PROJECTIONS:
        summary = pd.read_csv(tmp_path / "MAPS" / projection / "cam_summary.csv")
        assert len(summary) == 4
    assert sorted(os.listdir(tmp_path / "executed")) == sorted(
        ["Figure_merit.ipynb", "ClassActivationMaps.ipynb"]
    )
    assert "Results" in capsys.readouterr().out
