"""Stage 3 computations: figures of merit, fusion by subject, metrics.csv."""

import numpy as np
import pandas as pd
import pytest

from breastdensity.conventions import CLASSES, PROJECTIONS, DatasetError
from breastdensity.metrics import (
    GROUPS,
    bootstrap_ci,
    dense_accuracy,
    figures_of_merit,
    fuse,
    group_predictions,
    kappa,
    metrics_table,
)


def test_against_a_hand_computed_confusion_matrix():
    # true\pred   A  B  C  D
    #   A         2  1  0  0
    #   B         0  2  1  0
    #   C         0  0  3  0
    #   D         0  0  1  1
    y_true = [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3]
    y_pred = [0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 3]
    m = figures_of_merit(y_true, y_pred)
    assert m["accuracy"] == pytest.approx(8 / 11)
    recalls = [2 / 3, 2 / 3, 3 / 3, 1 / 2]
    precisions = [2 / 2, 2 / 3, 3 / 5, 1 / 1]
    assert m["recall"] == pytest.approx(np.mean(recalls))
    assert m["precision"] == pytest.approx(np.mean(precisions))
    f1 = [2 * p * r / (p + r) for p, r in zip(precisions, recalls, strict=True)]
    assert m["f1"] == pytest.approx(np.mean(f1))
    # dense (C,D) vs non-dense (A,B): only the B->C error crosses the line
    assert m["dense_accuracy"] == pytest.approx(10 / 11)
    # linear kappa by hand: 1 - sum(w*O)/sum(w*E), w = |i-j|/3
    observed = np.zeros((4, 4))
    for t, p in zip(y_true, y_pred, strict=True):
        observed[t, p] += 1
    expected = np.outer(observed.sum(1), observed.sum(0)) / observed.sum()
    weights = np.abs(np.subtract.outer(range(4), range(4))) / 3
    assert m["kappa_linear"] == pytest.approx(
        1 - (weights * observed).sum() / (weights * expected).sum()
    )
    quadratic = weights**2
    assert m["kappa_quadratic"] == pytest.approx(
        1 - (quadratic * observed).sum() / (quadratic * expected).sum()
    )


def test_perfect_and_degenerate_cases():
    assert figures_of_merit([0, 1, 2, 3], [0, 1, 2, 3])["kappa_linear"] == pytest.approx(1.0)
    assert np.isnan(kappa([1, 1], [1, 1], "linear"))  # one class only: undefined, not an error
    assert dense_accuracy([0, 3], [1, 2]) == 1.0
    probabilities = np.eye(4)[[0, 1, 2, 3]]
    assert figures_of_merit([0, 1, 2, 3], [0, 1, 2, 3], probabilities)["auc_ovr"] == 1.0


def test_bootstrap_interval_contains_the_estimate_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 4, 400)
    y_pred = np.where(rng.random(400) < 0.8, y_true, rng.integers(0, 4, 400))
    accuracy = lambda t, p: np.mean(t == p)  # noqa: E731
    low, high = bootstrap_ci(y_true, y_pred, accuracy, n_resamples=500)
    assert low < accuracy(y_true, y_pred) < high
    small_low, small_high = bootstrap_ci(y_true[:40], y_pred[:40], accuracy, n_resamples=500)
    assert (small_high - small_low) > (high - low)


def make_tables(rng, subjects=("s1", "s2", "s3", "s4"), labels="ABCD"):
    tables = {}
    for projection in PROJECTIONS:
        probabilities = rng.dirichlet(np.ones(4), size=len(subjects))
        table = pd.DataFrame(
            {
                "filename": [
                    f"{s}_{label}_{projection}.png"
                    for s, label in zip(subjects, labels, strict=True)
                ],
                "subject": list(subjects),
                "projection": projection,
                "true_label": list(labels),
            }
        )
        table["predicted_label"] = [CLASSES[i] for i in probabilities.argmax(1)]
        for i, c in enumerate(CLASSES):
            table[c] = probabilities[:, i]
        tables[projection] = table
    return tables


def test_fusion_averages_by_subject_whatever_the_row_order(rng):
    tables = make_tables(rng)
    fused, dropped = fuse(tables, PROJECTIONS)
    assert dropped == [] and fused["subject"].tolist() == ["s1", "s2", "s3", "s4"]
    expected = np.mean(
        [tables[p].loc[0, list(CLASSES)].to_numpy(float) for p in PROJECTIONS], axis=0
    )
    np.testing.assert_allclose(fused.loc[0, list(CLASSES)].to_numpy(float), expected)
    shuffled = {p: t.sample(frac=1, random_state=i) for i, (p, t) in enumerate(tables.items())}
    fused_shuffled, _ = fuse(shuffled, PROJECTIONS)
    pd.testing.assert_frame_equal(fused, fused_shuffled)
    groups, _ = group_predictions(shuffled)
    reference, _ = group_predictions(tables)
    pd.testing.assert_frame_equal(metrics_table(groups, 50), metrics_table(reference, 50))


def test_missing_projection_and_label_disagreement(rng):
    tables = make_tables(rng)
    tables["MLO_L"] = tables["MLO_L"].iloc[1:]  # s1 lacks MLO_L
    tables["CC_R"].loc[2, "true_label"] = "D"  # s3 disagrees (C elsewhere)
    with pytest.raises(DatasetError) as error:
        fuse(tables, PROJECTIONS)
    assert "s1 lacks MLO_L" in str(error.value) and "s3 has different true labels" in str(
        error.value
    )
    fused, dropped = fuse(tables, PROJECTIONS, drop_incomplete=True)
    assert fused["subject"].tolist() == ["s2", "s4"] and len(dropped) == 2
    right, _ = fuse(tables, ("CC_R", "MLO_R"), drop_incomplete=True)
    assert right["subject"].tolist() == ["s1", "s2", "s4"]


def test_metrics_table_rows_and_missing_projections(rng):
    tables = make_tables(rng)
    del tables["CC_L"]
    groups, notes = group_predictions(tables)
    table = metrics_table(groups, n_resamples=50)
    assert table.index.tolist() == list(GROUPS)
    for column in [
        "accuracy",
        "recall",
        "precision",
        "f1",
        "kappa_linear",
        "kappa_quadratic",
        "dense_accuracy",
    ]:
        assert column in table.columns
    assert table.loc[["CC_L", "left", "total"], "accuracy"].isna().all()
    assert table.loc[["CC_R", "right"], "accuracy"].notna().all()
    assert "CC_L" in notes["left"] and "CC_L" in notes["total"]


def test_position_matching_as_the_reference(rng):
    tables = make_tables(rng, subjects=("a", "b", "c", "d"))
    for p in PROJECTIONS:
        tables[p]["subject"] = [f"{p}_{i}" for i in range(4)]  # names that do not match
    fused, _ = fuse(tables, PROJECTIONS, by="position")
    assert len(fused) == 4 and fused["true_label"].tolist() == list("ABCD")
