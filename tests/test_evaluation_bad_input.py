"""Stages 3 and 4 against bad input: prediction files that lie, output folders that are not theirs."""

import numpy as np
import pandas as pd
import pytest
from conftest import execute_notebook, untrained_model_set
from test_reliability import write_table

from breastdensity.conventions import DatasetError
from breastdensity.data.phantoms import generate_dataset
from breastdensity.predictions import csv_path, read_predictions

ROWS = [("A", "A", 0.7, 0.1, 0.1, 0.1), ("B", "B", 0.1, 0.7, 0.1, 0.1)]


class TestPredictionFiles:
    def test_another_projections_file_renamed_is_refused(self, tmp_path):
        # the CC_L predictions copied over predictions_ccr.csv, content unchanged
        cc_l = write_table(tmp_path / "P", ROWS, "CC_L")
        cc_l.rename(csv_path(tmp_path / "P", "CC_R"))
        with pytest.raises(DatasetError, match=r"predictions_ccr\.csv is the CC_R .* are of CC_L"):
            read_predictions(tmp_path / "P", "CC_R")

    def test_a_probability_that_is_not_a_number(self, tmp_path):
        path = write_table(tmp_path / "P", ROWS, "CC_R")
        table = pd.read_csv(path)
        table["C"] = table["C"].astype(object)
        table.loc[1, "C"] = "0.1x"
        table.to_csv(path, index=False)
        with pytest.raises(DatasetError, match=r"row 2 \(s1_B_CC_R.png\): the probability of C"):
            read_predictions(tmp_path / "P", "CC_R")

    @pytest.mark.parametrize(
        "content",
        [b"", b"\x89\x00\xff\xfe binary", b'filename,subject\n"unterminated,x\n'],
        ids=["empty", "binary", "broken quoting"],
    )
    def test_an_unreadable_table(self, tmp_path, content):
        path = csv_path(tmp_path / "P", "CC_R")
        path.parent.mkdir()
        path.write_bytes(content)
        with pytest.raises(DatasetError, match=f"{path}: not a readable prediction table"):
            read_predictions(tmp_path / "P", "CC_R")

    def test_an_empty_probability_is_not_finite(self, tmp_path):
        path = write_table(tmp_path / "P", ROWS, "CC_R")
        table = pd.read_csv(path)
        table.loc[0, "A"] = np.nan
        table.to_csv(path, index=False)
        with pytest.raises(DatasetError, match="row 1"):
            read_predictions(tmp_path / "P", "CC_R")


@pytest.mark.slow
def test_maps_into_the_test_folder_are_refused_and_nothing_is_deleted(tmp_path):
    """output_dir = test_root (swapped parameters) would have replaced <test_root>/CC_R/."""
    generate_dataset(tmp_path / "data", (0, 0, 4), (64, 64), seed=2)
    test_root = tmp_path / "data" / "TestSet"
    before = sorted(p.relative_to(test_root) for p in test_root.rglob("*"))
    models = untrained_model_set(tmp_path / "models", 64)
    with pytest.raises(Exception, match="already holds files this project did not write"):
        execute_notebook(
            "ClassActivationMaps.ipynb",
            tmp_path / "executed.ipynb",
            models_root=str(models),
            test_root=str(test_root),
            projections=["CC_R"],
            output_dir=str(test_root),
            compare_max_images=0,
        )
    assert sorted(p.relative_to(test_root) for p in test_root.rglob("*")) == before
