"""Stage 2 on images without labels (Prediction_ResNet.py --images), and stage 3 skipping them."""

import shutil

import numpy as np
import pandas as pd
import Prediction_ResNet
import Preprocess_Mammograms
import pytest
from conftest import cbis_exam, untrained_model_set

from breastdensity.conventions import PROJECTIONS, list_unlabelled_images
from breastdensity.metrics import (
    expected_density,
    group_predictions,
    metrics_table,
    view_consistency,
)
from breastdensity.predictions import read_predictions

# Stage 0 names unlabelled DICOMs after their PatientID ("Mass-Test_P_00173_LEFT_CC" ...)
# without the side and view words: one subject for the four views.
SUBJECT = "Mass-Test_P_00173"


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory):
    """Stage 0 on a real four-view exam (4 CBIS-DDSM DICOMs, small), and an untrained 64 px model
    per projection."""
    root = tmp_path_factory.mktemp("unlabelled")
    assert (
        Preprocess_Mammograms.main(
            [
                "--input",
                str(cbis_exam()["rcc"].parent),
                "--out",
                str(root / "stage0"),
                "--max-height",
                "160",
            ]
        )
        == 0
    )
    untrained_model_set(root / "models")
    return root


def predict(unlabelled, images, output, projection="all"):
    return Prediction_ResNet.main(
        [
            "--projection",
            projection,
            "--models-root",
            str(unlabelled / "models"),
            "--images",
            str(images),
            "--output-dir",
            str(output),
        ]
    )


@pytest.mark.slow
def test_stage0_output_is_predicted_without_labels(unlabelled, tmp_path, capsys):
    output = tmp_path / "Prediction"
    assert predict(unlabelled, unlabelled / "stage0", output) == 0
    printed = capsys.readouterr().out
    assert printed.count("no true labels: accuracy not computed") == 4
    tables = {}
    for projection in PROJECTIONS:
        table = read_predictions(output, projection)
        assert len(table) == 1 and table["true_label"].isna().all()
        assert table["subject"].tolist() == [SUBJECT]
        np.testing.assert_allclose(table[list("ABCD")].sum(axis=1), 1.0, atol=1e-5)
        tables[projection] = table
    # stage 3: every group needs labels, so none is computed and the notes say why
    groups, notes = group_predictions(tables)
    assert groups == {}
    assert all("without a true label" in notes[group] for group in ("CC_R", "right", "total"))
    assert metrics_table(groups)["accuracy"].isna().all()
    # ... but the label-free agreement of the views is
    per_subject, agreement = view_consistency(tables)
    assert agreement["subjects"] == 1 and agreement["subjects_both_sides"] == 1
    for projection, table in tables.items():
        density = expected_density(table[list("ABCD")])[0]
        assert per_subject[f"density_{projection}"].iloc[0] == pytest.approx(density)


@pytest.mark.slow
def test_flat_folder_with_some_projections(unlabelled, tmp_path, capsys):
    flat = tmp_path / "flat"
    flat.mkdir()
    for projection in ("CC_R", "MLO_L"):
        for record in list_unlabelled_images(unlabelled / "stage0", projection):
            shutil.copy(record.path, flat / record.path.name)
    (flat / "notes.txt").write_text("not an image")
    output = tmp_path / "Prediction"
    assert predict(unlabelled, flat, output) == 0
    printed = capsys.readouterr().out
    assert "[CC_L] no image in" in printed and "[MLO_R] no image in" in printed
    assert sorted(p.name for p in output.iterdir()) == [
        "predictions_ccr.csv",
        "predictions_ccr.txt",
        "predictions_mlol.csv",
        "predictions_mlol.txt",
    ]
    table = pd.read_csv(output / "predictions_ccr.csv", keep_default_na=False)
    assert table["true_label"].tolist() == [""]
    assert table["filename"].tolist() == [f"{SUBJECT}_CC_R.png"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert predict(unlabelled, empty, tmp_path / "none") == 2
    assert "no image of" in capsys.readouterr().err
