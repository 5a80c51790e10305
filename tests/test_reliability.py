"""Issue 16, "nothing lost, nothing silently wrong": one test class per finding.

1. overwrite safety of the generator; 2. diverged runs and argument checks;
3. --resume with changed settings; 4. stale outputs; 5. provenance and
projection checks; 6. the smaller ones (unreadable models, bad prediction
files, unwritable output folders, an interrupted first run).
"""

import json
import math

import keras
import Make_Phantoms
import numpy as np
import pandas as pd
import Prediction_ResNet
import pytest
import Train_ResNet
from conftest import execute_notebook, write_png
from test_training_bad_input import train_args

from breastdensity.cam import write_cam_images
from breastdensity.conventions import PROJECTIONS, DatasetError, list_class_images
from breastdensity.data.phantoms import generate_dataset
from breastdensity.files import mark_owned
from breastdensity.inference import check_projection_match
from breastdensity.metrics import group_predictions
from breastdensity.network import build_resnet
from breastdensity.predictions import (
    PROVENANCE_COLUMNS,
    csv_path,
    model_provenance,
    read_predictions,
    write_predictions,
)

SIZE = ["64", "64"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A tiny phantom set: 4 training, 4 validation and 4 test subjects (one per class) at 64 px."""
    root = tmp_path_factory.mktemp("reliability_data")
    generate_dataset(root, (4, 4, 4), (64, 64), seed=3)
    return root


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A model set: an untrained 64 px ResNet per projection, with its training_config.json."""
    root = tmp_path_factory.mktemp("reliability_models")
    keras.utils.set_random_seed(0)
    model = build_resnet(64)
    for projection in PROJECTIONS:
        folder = root / "set1" / f"{projection}_model"
        folder.mkdir(parents=True)
        model.save(folder / "final_weights.keras")
        (folder / "training_config.json").write_text(json.dumps({"projection": projection}))
    return root


def predict(models_root, test_root, output_dir, *extra):
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


# ----------------------------------------------------------------------------
# 1. Data lost
# ----------------------------------------------------------------------------


class TestOverwrite:
    def phantoms(self, out, *extra):
        return Make_Phantoms.main(
            ["--out", str(out), "--subjects", "1", "0", "0", "--seed", "1", "--size", *SIZE]
            + ["--workers", "1", *extra]
        )

    def test_never_deletes_a_tree_it_did_not_write(self, tmp_path, capsys):
        foreign = write_png(
            tmp_path / "TestSet" / "CC_R" / "test" / "A" / "x.png", np.zeros((8, 8))
        )
        assert self.phantoms(tmp_path, "--overwrite") == 2
        assert foreign.is_file()
        error = capsys.readouterr().err
        assert "manifest.csv" in error and "TestSet" in error
        assert self.phantoms(tmp_path) == 2
        error = capsys.readouterr().err
        assert "pass --overwrite" not in error  # it would not help: nothing here is ours
        assert foreign.is_file()

    def test_deletes_only_what_its_manifest_lists(self, tmp_path, capsys):
        generate_dataset(tmp_path, (0, 0, 2), (64, 64), seed=1)
        notes = tmp_path / "notes.txt"
        notes.write_text("mine")
        assert self.phantoms(tmp_path) == 2
        error = capsys.readouterr().err
        assert "--overwrite would delete the 16 files" in error  # 2 subjects x 4 views x 2
        user_file = tmp_path / "TestSet" / "CC_R" / "test" / "A" / "user_A_CC_R.png"
        write_png(user_file, np.zeros((8, 8)))
        assert self.phantoms(tmp_path, "--overwrite") == 2  # a file it did not write
        assert "user_A_CC_R.png" in capsys.readouterr().err
        assert len(list(tmp_path.rglob("*.png"))) == 17  # nothing deleted
        user_file.unlink()
        assert self.phantoms(tmp_path, "--overwrite") == 0
        assert not (tmp_path / "TestSet").exists()  # the old split is gone, all of it
        assert notes.read_text() == "mine"  # beside the dataset: kept
        manifest = pd.read_csv(tmp_path / "manifest.csv")
        assert set(manifest["split"]) == {"train"}
        assert len(list(tmp_path.rglob("*.png"))) == 8

    @pytest.mark.parametrize(
        ("flag", "value"),
        [
            ("--label-noise", "-5"),
            ("--label-noise", "nan"),
            ("--label-noise", "inf"),
            ("--seed", "-1"),
            ("--size", "40 40"),
            ("--workers", "0"),
        ],
    )
    def test_bad_arguments_are_refused_before_any_folder(self, tmp_path, flag, value, capsys):
        arguments = ["--out", str(tmp_path / "d"), "--subjects", "1", "0", "0", "--seed", "1"]
        with pytest.raises(SystemExit) as stop:
            Make_Phantoms.main([*arguments, flag, *value.split()])
        assert stop.value.code == 2
        assert flag in capsys.readouterr().err
        assert not (tmp_path / "d").exists()

    def test_unwritable_output_is_reported_before_work(self, tmp_path, capsys):
        (tmp_path / "file").write_text("not a folder")
        assert self.phantoms(tmp_path / "file" / "d") == 2
        assert "cannot write" in capsys.readouterr().err


# ----------------------------------------------------------------------------
# 2. Diverged runs and argument checks
# ----------------------------------------------------------------------------


class TestDivergence:
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
        status = predict(
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


# ----------------------------------------------------------------------------
# 4. Stale outputs
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


# ----------------------------------------------------------------------------
# 5. Provenance and projection checks
# ----------------------------------------------------------------------------


class TestProvenance:
    def test_prediction_files_record_the_model(self, data, models, tmp_path):
        assert (
            predict(models / "set1", data / "TestSet", tmp_path / "P", "--projection", "CC_R") == 0
        )
        table = pd.read_csv(csv_path(tmp_path / "P", "CC_R"))
        model_file = models / "set1" / "CC_R_model" / "final_weights.keras"
        assert set(PROVENANCE_COLUMNS) <= set(table.columns)
        assert ((tmp_path / "P" / table["model"]).map(lambda p: p.resolve()) == model_file).all()
        import hashlib

        assert (table["model_sha256"] == hashlib.sha256(model_file.read_bytes()).hexdigest()).all()
        assert (table["model_projection"] == "CC_R").all() and (table["projection"] == "CC_R").all()

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

    def test_model_applied_to_another_projection(self, data, models, tmp_path, capsys):
        cc_r = models / "set1" / "CC_R_model" / "final_weights.keras"
        arguments = ("--projection", "CC_L", "--model", cc_r)
        assert predict(models, data / "TestSet", tmp_path / "P", *arguments) == 2
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
# 6. Smaller ones
# ----------------------------------------------------------------------------


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


class TestSmallerOnes:
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

    def test_unreadable_model_file_and_folder_given_as_model(self, data, tmp_path, capsys):
        (tmp_path / "random.keras").write_bytes(np.random.default_rng(0).bytes(2000))
        arguments = ("--projection", "CC_R", "--model")
        assert (
            predict(
                tmp_path, data / "TestSet", tmp_path / "P", *arguments, tmp_path / "random.keras"
            )
            == 2
        )
        error = capsys.readouterr().err
        assert "random.keras" in error and "not a Keras model file" in error
        assert "not found" not in error.lower()
        assert predict(tmp_path, data / "TestSet", tmp_path / "P", *arguments, tmp_path) == 2
        assert "is a folder" in capsys.readouterr().err

    def test_unwritable_prediction_folder_is_found_before_predicting(
        self, data, models, tmp_path, monkeypatch, capsys
    ):
        import breastdensity.inference

        def never(*args, **kwargs):
            raise AssertionError("predicted although the output folder is unwritable")

        monkeypatch.setattr(breastdensity.inference, "predict_records", never)
        (tmp_path / "file").write_text("")
        status = predict(
            models / "set1", data / "TestSet", tmp_path / "file" / "P", "--projection", "all"
        )
        assert status == 2 and "cannot write" in capsys.readouterr().err

    def test_full_disk_is_found_before_training(self, data, tmp_path, monkeypatch, capsys):
        import errno

        import breastdensity.files

        def full(path):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))

        monkeypatch.setattr(breastdensity.files, "_probe", full)
        assert Train_ResNet.main(train_args(data, tmp_path / "m")) == 2
        assert "No space left on device" in capsys.readouterr().err
        assert not (tmp_path / "m").exists()

    def test_data_error_leaves_no_empty_model_folder(self, tmp_path, capsys):
        assert Train_ResNet.main(train_args(tmp_path / "nothing", tmp_path)) == 2
        assert "does not exist" in capsys.readouterr().err
        assert not (tmp_path / "CC_R_model").exists()

    def test_interrupted_first_run_points_to_resume(self, data, tmp_path, capsys):
        folder = tmp_path / "CC_R_model"
        (folder / "logs").mkdir(parents=True)
        (folder / "training_config.json").write_text("{}")
        assert Train_ResNet.main(train_args(data, tmp_path)) == 2
        assert "--resume" in capsys.readouterr().err
