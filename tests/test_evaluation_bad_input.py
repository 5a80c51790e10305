"""Stages 3 and 4 against bad input: prediction files that lie, output folders that are not theirs.

Prediction tables and .txt files with bad rows or values (named by file and row), predictions
of two model sets or of no common subject fused, and figures, confusion matrices and
class-activation maps of an earlier run left beside the new ones.
"""

import math

import numpy as np
import pandas as pd
import pytest
from conftest import execute_notebook, untrained_model_set, write_png

from breastdensity.cam import write_cam_images
from breastdensity.conventions import DatasetError
from breastdensity.data.phantoms import generate_dataset
from breastdensity.files import mark_owned
from breastdensity.metrics import group_predictions
from breastdensity.predictions import (
    csv_path,
    model_provenance,
    read_predictions,
    write_predictions,
)

ROWS = [("A", "A", 0.7, 0.1, 0.1, 0.1), ("B", "B", 0.1, 0.7, 0.1, 0.1)]


def write_table(folder, rows, projection="CC_R", provenance=None):
    """A prediction CSV from (true, predicted, A, B, C, D) rows, as stage 2 writes it."""
    table = pd.DataFrame(
        {
            "filename": [f"s{i}_{row[0]}_{projection}.png" for i, row in enumerate(rows)],
            "subject": [f"s{i}" for i in range(len(rows))],
            "projection": projection,
            "true_label": [row[0] for row in rows],
            "predicted_label": [row[1] for row in rows],
        }
    )
    table[["A", "B", "C", "D"]] = np.array([row[2:] for row in rows], np.float64)
    for column, value in (provenance or {}).items():
        table[column] = value
    folder.mkdir(parents=True, exist_ok=True)
    table.to_csv(csv_path(folder, projection), index=False)
    return csv_path(folder, projection)


# ----------------------------------------------------------------------------
# Stage 3's input: the prediction files
# ----------------------------------------------------------------------------


class TestPredictionFiles:
    good = ("A", "A", 0.7, 0.1, 0.1, 0.1)

    @pytest.mark.parametrize(
        ("bad", "message"),
        [
            (("B", "A", math.nan, 0.5, 0.25, 0.25), "not finite"),
            (("B", "A", 5, -3, 0, 0), r"outside \[0, 1\]"),
            (("B", "A", 0.5, 0.1, 0.1, 0.1), "sum to 0.8"),
            (("B", "B", 0.7, 0.1, 0.1, 0.1), "predicted_label B.*A"),
        ],
    )
    def test_bad_prediction_rows_name_file_and_row(self, tmp_path, bad, message):
        path = write_table(tmp_path, [self.good, self.good, bad])
        with pytest.raises(DatasetError, match=message) as error:
            read_predictions(tmp_path, "CC_R")
        assert str(path) in str(error.value) and "row 3" in str(error.value)

    @pytest.mark.filterwarnings("ignore::breastdensity.conventions.DataWarning")  # only class A
    def test_bad_txt_values_are_named_too(self, tmp_path):
        np.savetxt(tmp_path / "predictions_ccr.txt", [[0.25] * 4, [math.nan, 0, 0, 1]])
        write_png(tmp_path / "T" / "CC_R" / "test" / "A" / "1_A_CC_R.png", np.zeros((8, 8)))
        write_png(tmp_path / "T" / "CC_R" / "test" / "A" / "2_A_CC_R.png", np.zeros((8, 8)))
        with pytest.raises(DatasetError, match="predictions_ccr.txt, row 2"):
            read_predictions(tmp_path, "CC_R", test_root=tmp_path / "T")

    def test_written_tables_are_still_accepted(self, tmp_path):
        table = pd.read_csv(write_table(tmp_path, [self.good, ("B", "B", 0.2, 0.5, 0.2, 0.1)]))
        write_predictions(tmp_path / "w", {"CC_R": table})
        assert len(read_predictions(tmp_path / "w", "CC_R")) == 2

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


# ----------------------------------------------------------------------------
# Stage 3: fusing the projections
# ----------------------------------------------------------------------------


class TestFusion:
    def test_no_common_subject_is_a_clear_error(self):
        probabilities = np.full((2, 4), 0.25)
        right = {}
        for projection, subjects in (("CC_R", ["s1", "s2"]), ("MLO_R", ["s3", "s4"])):
            table = pd.DataFrame(
                {
                    "filename": [f"{s}.png" for s in subjects],
                    "subject": subjects,
                    "projection": projection,
                    "true_label": "A",
                    "predicted_label": "A",
                }
            )
            table[["A", "B", "C", "D"]] = probabilities
            right[projection] = table
        with pytest.raises(DatasetError, match="no subject has all of CC_R, MLO_R"):
            group_predictions(right, drop_incomplete=True)

    def test_stage3_refuses_to_fuse_two_model_sets(self, tmp_path):
        rows = [("A", "A", 0.7, 0.1, 0.1, 0.1), ("B", "B", 0.1, 0.7, 0.1, 0.1)]
        for projection, models_root in (("CC_R", "set2"), ("MLO_R", "set1")):
            model_file = tmp_path / models_root / f"{projection}_model" / "final_weights.keras"
            model_file.parent.mkdir(parents=True)
            model_file.write_bytes(models_root.encode())
            provenance = model_provenance(model_file, tmp_path / "P", projection)
            write_table(tmp_path / "P", rows, projection, provenance)
        tables = {p: read_predictions(tmp_path / "P", p) for p in ("CC_R", "MLO_R")}
        with pytest.raises(DatasetError, match="different model sets") as error:
            group_predictions(tables)
        assert str(tmp_path / "set1") in str(error.value)
        assert str(tmp_path / "set2") in str(error.value)
        groups, _ = group_predictions(tables, allow_mixed_models=True)
        assert len(groups["right"]) == 2
        groups, _ = group_predictions({"CC_R": tables["CC_R"]})  # one projection: no fusion
        assert "CC_R" in groups


# ----------------------------------------------------------------------------
# Stages 3 and 4's output folders: nothing of an earlier run left, nothing foreign deleted
# ----------------------------------------------------------------------------


class TestStaleOutputs:
    def test_cam_files_of_another_predicted_class_are_cleared(self, tmp_path):
        gray = np.full((64, 48), 100, np.uint8)
        network_input = np.zeros((32, 32, 3), np.float32)
        cam = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
        stem = "te0001_A_CC_R"
        write_cam_images(tmp_path, stem, "B", gray, network_input, cam)
        (tmp_path / f"B_{stem}_methods.png").write_bytes(b"old grid")
        other = tmp_path / "C_te0002_A_CC_R_overlay.png"
        other.write_bytes(b"another image")
        written = write_cam_images(tmp_path, stem, "A", gray, network_input, cam)
        assert sorted(p.name for p in tmp_path.glob(f"*_{stem}_*")) == sorted(
            p.name for p in written.values()
        )
        assert other.exists()

    @pytest.mark.slow
    def test_figure_merit_removes_confusion_matrices_it_did_not_recompute(self, tmp_path):
        figures = tmp_path / "out" / "CONFUSION_MATRICES"
        for suffix in ("CCR", "MLOR", "CCL", "MLOL", "right", "left", "total"):
            write_png(figures / f"confusionmatrix_{suffix}.png", np.zeros((4, 4), np.uint8))
        rows = [("A", "A", 0.7, 0.1, 0.1, 0.1), ("B", "B", 0.1, 0.7, 0.1, 0.1)]
        for projection in ("CC_R", "CC_L"):  # an earlier run had all four projections
            write_table(tmp_path / "P", rows, projection)
        parameters = {"predictions_dir": str(tmp_path / "P"), "output_dir": str(tmp_path / "out")}
        execute_notebook(
            "Figure_merit.ipynb", tmp_path / "executed.ipynb", **parameters, n_bootstrap=20
        )
        names = sorted(p.name for p in figures.iterdir())
        assert names == ["confusionmatrix_CCL.png", "confusionmatrix_CCR.png"]
        assert all(p.stat().st_size > 1000 for p in figures.iterdir())  # the new figures

    @pytest.mark.slow
    def test_cam_notebook_replaces_the_projection_folder(self, data, models, tmp_path):
        stale = tmp_path / "MAPS" / "CC_L" / "D" / "D_gone_D_CC_L_overlay.png"
        write_png(stale, np.zeros((4, 4), np.uint8))
        mark_owned(tmp_path / "MAPS" / "CC_L", "an earlier run of the notebook")
        execute_notebook(
            "ClassActivationMaps.ipynb",
            tmp_path / "executed.ipynb",
            model_path=str(models / "set1" / "CC_R_model" / "final_weights.keras"),
            test_root=str(data / "TestSet"),
            projections=["CC_L"],
            output_dir=str(tmp_path / "MAPS"),
            compare_max_images=0,
            allow_projection_mismatch=True,
        )
        assert not stale.exists()
        summary = pd.read_csv(tmp_path / "MAPS" / "CC_L" / "cam_summary.csv")
        overlays = list((tmp_path / "MAPS" / "CC_L").rglob("*_overlay.png"))
        assert len(overlays) == (summary["status"] == "written").sum()
        assert not [p for p in (tmp_path / "MAPS").iterdir() if p.name.startswith(".")]


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
