"""tools/mias_cv.py: cross-validation by woman on films laid out as mini-MIAS publishes them."""

from __future__ import annotations

import cv2
import mias_cv
import pandas as pd
import pytest
from conftest import synthetic_film

LEVELS = "FFGGDDFFGGDDFFGGDDFF"  # 10 women, both films of a woman one level


def test_without_mias_it_says_where_it_comes_from_and_skips(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(mias_cv, "SHARED_MIAS", tmp_path / "absent")
    assert mias_cv.main(["--work", str(tmp_path / "work")]) == 0
    assert "skipped: no mini-MIAS at" in capsys.readouterr().out
    assert not (tmp_path / "work").exists()
    with pytest.raises(SystemExit, match="no Info.txt"):  # a folder given explicitly must be MIAS
        mias_cv.main(["--mias", str(tmp_path), "--work", str(tmp_path / "work")])


@pytest.mark.slow
def test_folds_keep_women_together_and_every_film_is_scored_once(tmp_path):
    films = tmp_path / "mias"
    films.mkdir()
    lines = []
    for index, level in enumerate(LEVELS, start=1):
        image, _ = synthetic_film(index, right=index % 2 == 1)
        cv2.imwrite(str(films / f"mdb{index:03d}.pgm"), image)
        lines.append(f"mdb{index:03d} {level} NORM")
    (films / "Info.txt").write_text("header\n" + "\n".join(lines) + "\n")
    work = tmp_path / "work"
    arguments = ["--mias", str(films), "--work", str(work), "--folds", "2", "--img-size", "64"]
    arguments += [
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--targets",
        "ordinal",
        "--init-from",
        "none",
    ]
    assert mias_cv.main(arguments) == 0
    predictions = pd.read_csv(work / "predictions.csv")
    assert len(predictions) == len(LEVELS)
    assert predictions.groupby("subject")["fold"].nunique().max() == 1  # a woman in one fold
    assert predictions["expected_ordinal"].between(0, 3).all()  # every film predicted, held out
    summary = pd.read_csv(work / "summary.csv").set_index("score")
    assert list(summary.index) == [
        "gray_otsu",
        "gray_otsu_stage0",
        "gray_stage0_breast",
        "expected_ordinal",
    ]
    assert summary["auc_f_vs_d"].between(0, 1).all()
    # the fold's training data: the other fold's films only, both sides in one folder
    fold0 = predictions[predictions["fold"] == 0]
    trained = list((work / "ordinal" / "fold0" / "data" / "TrainingSet").rglob("*.png"))
    assert len(trained) == len(LEVELS) - len(fold0)
    # a second run continues: nothing retrained, the earlier choice stays in the tables
    assert mias_cv.main(arguments) == 0
    assert "expected_ordinal" in pd.read_csv(work / "summary.csv")["score"].tolist()


def test_each_training_choice_and_backbone_gets_its_own_column():
    # the reference ResNet keeps the names of earlier runs, so their tables still merge
    assert mias_cv.score_column("onehot") == "expected_onehot"
    assert mias_cv.score_column("ordinal", phantoms=True) == "expected_ordinal_phantoms"
    assert mias_cv.score_column("onehot", "vit-tiny") == "expected_onehot_vit-tiny"


def test_class_agreement_scores_predicted_classes_against_the_filed_levels():
    table = pd.DataFrame(
        {"class": ["A", "B", "C", "C"], "class_onehot": ["A", "B", "B", "C"], "gray_otsu": 0.0}
    )
    agreement = mias_cv.class_agreement(table, "expected_onehot")
    assert agreement["accuracy"] == 0.75
    assert 0 < agreement["kappa_linear"] < 1
    perfect = table.assign(class_onehot=table["class"])
    assert mias_cv.class_agreement(perfect, "expected_onehot")["kappa_linear"] == 1.0
    assert mias_cv.class_agreement(table, "gray_otsu") == {}  # a baseline has no classes
