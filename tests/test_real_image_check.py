"""Label-free checks of predictions on real images: view agreement (metrics) and tools/real_image_check.py."""

import numpy as np
import pandas as pd
import pytest
import real_image_check
from conftest import REPO, write_png

from breastdensity.conventions import (
    CLASSES,
    DatasetError,
    ImageRecord,
    image_file_name,
    unlabelled_file_name,
)
from breastdensity.metrics import expected_density, view_consistency
from breastdensity.predictions import predictions_table, write_predictions

ONE_HOT = np.eye(len(CLASSES))


def table(projection: str, rows: dict[str, np.ndarray]):
    """A prediction table of unlabelled images: subject -> probability row."""
    records = [
        ImageRecord(REPO / unlabelled_file_name(subject, projection), "", subject)
        for subject in rows
    ]
    return predictions_table(records, projection, np.array(list(rows.values())))


def test_expected_density_is_the_class_index_of_a_certain_prediction():
    np.testing.assert_allclose(expected_density(ONE_HOT), [0, 1, 2, 3])
    assert expected_density([[0.5, 0, 0, 0.5]])[0] == pytest.approx(1.5)


def test_view_consistency_against_hand_computed_values():
    mostly_d = np.array([0.0, 0.0, 0.4, 0.6])  # expected density 2.6
    tables = {
        # s1: every view D; s2: right C/D, left A (the breasts disagree); s3: right side only,
        # its CC and MLO views disagree (B against C)
        "CC_R": table("CC_R", {"s1": ONE_HOT[3], "s2": ONE_HOT[3], "s3": ONE_HOT[1]}),
        "MLO_R": table("MLO_R", {"s1": ONE_HOT[3], "s2": mostly_d, "s3": ONE_HOT[2]}),
        "CC_L": table("CC_L", {"s1": ONE_HOT[3], "s2": ONE_HOT[0]}),
        "MLO_L": table("MLO_L", {"s1": ONE_HOT[3], "s2": ONE_HOT[0]}),
    }
    per_subject, summary = view_consistency(tables)
    rows = per_subject.set_index("subject")
    assert list(rows.index) == ["s1", "s2", "s3"]
    assert rows.loc["s2", "density_right"] == pytest.approx((3 + 2.6) / 2)
    assert rows.loc["s2", "class_right"] == "D" and rows.loc["s2", "class_left"] == "A"
    assert rows.loc["s2", "side_difference"] == pytest.approx(2.8)
    assert bool(rows.loc["s1", "sides_agree"]) and not bool(rows.loc["s2", "sides_agree"])
    assert pd.isna(rows.loc["s3", "sides_agree"]) and pd.isna(rows.loc["s3", "density_left"])
    assert summary["subjects"] == 3 and summary["subjects_both_sides"] == 2
    assert summary["sides_agree"] == pytest.approx(0.5)
    assert summary["mean_side_difference"] == pytest.approx(2.8 / 2)
    # sides with both views: s1 right and left, s2 right and left agree; s3 right does not
    assert summary["views_agree"] == pytest.approx(4 / 5)


def test_view_consistency_refuses_two_images_of_one_view():
    tables = {"CC_R": table("CC_R", {"s1": ONE_HOT[0]})}
    tables["CC_R"] = pd.concat([tables["CC_R"], tables["CC_R"]], ignore_index=True)
    with pytest.raises(DatasetError, match="s1 has more than one image"):
        view_consistency(tables)


def test_cli_on_unlabelled_predictions(tmp_path):
    # Three women, four views each; the breast's gray rises with the predicted density,
    # so the rank correlation is 1.
    images, predictions = tmp_path / "stage0", tmp_path / "pred"
    gray_of = {"w1": 60, "w2": 120, "w3": 200}
    class_of = {"w1": 0, "w2": 1, "w3": 3}
    tables = {}
    for projection in ("CC_R", "CC_L", "MLO_R", "MLO_L"):
        image = np.zeros((32, 32), np.uint8)
        for subject, gray in gray_of.items():
            image[:, 8:] = gray + (projection == "CC_L")  # distinct means: no ties
            write_png(
                images / "Unlabelled" / projection / unlabelled_file_name(subject, projection),
                image,
            )
        tables[projection] = table(projection, {s: ONE_HOT[c] for s, c in class_of.items()})
    for masks in ("Masks", "DenseMasks"):  # same names as the images, left out
        write_png(images / masks / "x" / unlabelled_file_name("w1", "CC_R"), image)
    write_predictions(predictions, tables)
    out = tmp_path / "check"
    assert (
        real_image_check.main(
            ["--predictions", str(predictions), "--images", str(images), "--out", str(out)]
        )
        == 0
    )
    rows = pd.read_csv(out / "images.csv")
    assert len(rows) == 12
    w2 = rows[rows["subject"] == "w2"]
    np.testing.assert_allclose(w2["density"], 1.0)
    np.testing.assert_allclose(sorted(w2["mean_gray"]), [120 / 255] * 3 + [121 / 255], atol=1e-4)
    summary = pd.read_csv(out / "summary.csv").iloc[0]
    assert summary["sides_agree"] == 1.0 and summary["views_agree"] == 1.0
    assert summary["spearman_density_gray"] > 0.9
    assert (out / "density_vs_gray.png").stat().st_size > 10_000
    assert len(pd.read_csv(out / "view_consistency.csv")) == 3


def test_cli_names_an_image_it_cannot_find(tmp_path):
    write_predictions(tmp_path / "pred", {"CC_R": table("CC_R", {"w1": ONE_HOT[0]})})
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="w1_CC_R.png: not found"):
        real_image_check.main(
            [
                "--predictions",
                str(tmp_path / "pred"),
                "--images",
                str(tmp_path / "empty"),
                "--out",
                str(tmp_path / "check"),
            ]
        )


def test_cli_with_labels_scores_dense_against_the_mean_gray_baseline(tmp_path):
    # Four labelled subjects; the model ranks dense above non-dense, while the gray is
    # made to rank them the other way: AUC 1 for the model, 0 for the baseline.
    labels = {"s1": "A", "s2": "B", "s3": "C", "s4": "D"}
    gray_of = {"s1": 200, "s2": 150, "s3": 100, "s4": 50}
    tables = {}
    for projection in ("CC_R", "MLO_R"):
        records = []
        for subject, label in labels.items():
            path = (
                tmp_path
                / "TestSet"
                / projection
                / "test"
                / label
                / image_file_name(subject, label, projection)
            )
            image = np.zeros((32, 32), np.uint8)
            image[:, 8:] = gray_of[subject]
            write_png(path, image)
            records.append(ImageRecord(path, label, subject))
        probabilities = ONE_HOT[[CLASSES.index(label) for label in labels.values()]]
        tables[projection] = predictions_table(records, projection, probabilities)
    write_predictions(tmp_path / "pred", tables)
    out = tmp_path / "check"
    real_image_check.main(
        [
            "--predictions",
            str(tmp_path / "pred"),
            "--images",
            str(tmp_path / "TestSet"),
            "--out",
            str(out),
        ]
    )
    summary = pd.read_csv(out / "summary.csv").iloc[0]
    assert summary["dense_auc_model_image"] == 1.0 and summary["dense_auc_model_subject"] == 1.0
    assert summary["dense_auc_gray_image"] == 0.0 and summary["dense_auc_gray_subject"] == 0.0
    unlabelled = pd.read_csv(out / "images.csv").assign(true_label=np.nan)
    assert np.isnan(real_image_check.dense_auc(unlabelled)["dense_auc_model_image"])
