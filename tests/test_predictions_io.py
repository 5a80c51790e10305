import numpy as np
import pandas as pd
import pytest
from conftest import write_png

from breastdensity.conventions import DatasetError, ImageRecord
from breastdensity.predictions import (
    csv_path,
    predictions_table,
    read_predictions,
    txt_path,
    write_predictions,
)


def make_records(tmp_path, labels):
    return [
        ImageRecord(tmp_path / label / f"{i}_{label}_CC_R.png", label, str(i))
        for i, label in enumerate(labels)
    ]


def test_round_trip_and_file_formats(tmp_path, rng):
    records = make_records(tmp_path, "AABCD")
    probabilities = rng.dirichlet(np.ones(4), size=5).astype(np.float32)
    table = predictions_table(records, "CC_R", probabilities)
    written = write_predictions(tmp_path / "Prediction", {"CC_R": table})
    assert [p.name for p in written] == ["predictions_ccr.txt", "predictions_ccr.csv"]
    matrix = np.loadtxt(txt_path(tmp_path / "Prediction", "CC_R"))
    assert matrix.shape == (5, 4)
    csv = pd.read_csv(csv_path(tmp_path / "Prediction", "CC_R"))
    assert list(csv.columns) == [
        "filename",
        "subject",
        "projection",
        "true_label",
        "predicted_label",
        "A",
        "B",
        "C",
        "D",
    ]
    np.testing.assert_array_equal(csv[["A", "B", "C", "D"]].to_numpy(), matrix)
    back = read_predictions(tmp_path / "Prediction", "CC_R")
    assert back.attrs["matched_by"] == "subject"
    assert back["true_label"].tolist() == list("AABCD")
    assert list(tmp_path.joinpath("Prediction").iterdir()).__len__() == 2  # no temp files


def test_failed_write_leaves_nothing(tmp_path, rng):
    records = make_records(tmp_path, "AB")
    good = predictions_table(records, "CC_R", rng.dirichlet(np.ones(4), size=2))
    bad = good.drop(columns=["D"])  # makes the second projection fail
    with pytest.raises(KeyError):
        write_predictions(tmp_path / "out", {"CC_R": good, "CC_L": bad})
    assert list((tmp_path / "out").iterdir()) == []


def test_txt_only_is_matched_by_position_with_the_test_tree(tmp_path, rng):
    for name in ["A/1_A_CC_R.png", "A/2_A_CC_R.png", "C/3_C_CC_R.png"]:
        write_png(tmp_path / "TestSet" / "CC_R" / "test" / name, np.zeros((8, 8), np.uint8))
    (tmp_path / "P").mkdir()
    np.savetxt(tmp_path / "P" / "predictions_ccr.txt", rng.dirichlet(np.ones(4), size=3))
    table = read_predictions(tmp_path / "P", "CC_R", test_root=tmp_path / "TestSet")
    assert table.attrs["matched_by"] == "position"
    assert table["true_label"].tolist() == ["A", "A", "C"]
    assert table["subject"].tolist() == ["1", "2", "3"]
    np.savetxt(tmp_path / "P" / "predictions_ccr.txt", rng.dirichlet(np.ones(4), size=2))
    with pytest.raises(DatasetError, match="cannot be matched by position"):
        read_predictions(tmp_path / "P", "CC_R", test_root=tmp_path / "TestSet")
    assert read_predictions(tmp_path / "P", "MLO_L") is None


def test_txt_and_csv_that_disagree_are_an_error(tmp_path, rng):
    records = make_records(tmp_path, "AB")
    write_predictions(
        tmp_path, {"CC_R": predictions_table(records, "CC_R", rng.dirichlet(np.ones(4), size=2))}
    )
    np.savetxt(txt_path(tmp_path, "CC_R"), rng.dirichlet(np.ones(4), size=2))
    with pytest.raises(DatasetError, match="disagree"):
        read_predictions(tmp_path, "CC_R")
