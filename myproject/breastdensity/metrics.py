"""Figures of merit for density classification, per projection, per side and per subject.

Fusion: the probability rows of one subject's images are averaged and the
fused class is the argmax, as in the reference (``right`` = CC_R + MLO_R,
``left`` = CC_L + MLO_L, ``total`` = all four projections). Rows are matched
by subject id, not by position.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy.stats import bootstrap
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from .conventions import CLASSES, PROJECTIONS, SIDES, DatasetError
from .files import atomic_write

# Rows of metrics.csv, in this order (external scripts read them).
GROUPS = ("CC_R", "MLO_R", "right", "CC_L", "MLO_L", "left", "total")
GROUP_MEMBERS = {**{p: (p,) for p in PROJECTIONS}, **SIDES, "total": PROJECTIONS}
# Suffix of confusionmatrix_<suffix>.png, as the reference named them.
FIGURE_SUFFIX = {
    **{projection: projection.replace("_", "") for projection in PROJECTIONS},  # CC_R -> CCR
    **{group: group for group in ("right", "left", "total")},
}
LABELS = list(range(len(CLASSES)))
# Columns of metrics.csv, in this order.
METRICS_COLUMNS = [
    "n",
    *("accuracy", "accuracy_ci_low", "accuracy_ci_high"),
    *("recall", "precision", "f1"),
    *("kappa_linear", "kappa_linear_ci_low", "kappa_linear_ci_high", "kappa_quadratic"),
    *("dense_accuracy", "auc_ovr"),
]


def label_indices(labels) -> np.ndarray:
    """'A'..'D' (or 0..3) -> 0..3."""
    values = list(labels)
    if values and isinstance(values[0], str):
        return np.array([CLASSES.index(v) for v in values], dtype=int)
    return np.asarray(values, dtype=int)


def is_dense(class_indices) -> np.ndarray:
    """Dense (C, D) or not (A, B), for class indices 0-3."""
    return np.asarray(class_indices) >= CLASSES.index("C")


def dense_accuracy(y_true, y_pred) -> float:
    """Accuracy of the dense (C, D) vs non-dense (A, B) decision."""
    return float(np.mean(is_dense(y_true) == is_dense(y_pred)))


def kappa(y_true, y_pred, weights: str | None) -> float:
    """Cohen's kappa on the 4 ordered classes; NaN when undefined (a single class)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined kappa -> NaN, reported as such
        value = cohen_kappa_score(y_true, y_pred, labels=LABELS, weights=weights)
    return float(value)


def macro_auc(y_true, probabilities) -> float:
    """One-vs-rest ROC AUC averaged over the classes that have positives and negatives."""
    y_true = np.asarray(y_true)
    aucs = [
        roc_auc_score(y_true == c, probabilities[:, c])
        for c in LABELS
        if 0 < np.sum(y_true == c) < len(y_true)
    ]
    return float(np.mean(aucs)) if aucs else float("nan")


def figures_of_merit(y_true, y_pred, probabilities=None) -> dict[str, float]:
    """All figures of merit for one group of predictions (class indices 0..3).

    recall and precision are macro averages over the classes present in the
    true or predicted labels (scikit-learn ``average='macro'``, as the reference).
    """
    y_true, y_pred = np.asarray(y_true, int), np.asarray(y_pred, int)
    result = {
        "n": len(y_true),
        "accuracy": accuracy_score(y_true, y_pred),
        "recall": recall_score(y_true, y_pred, average="macro", zero_division=0),
        "precision": precision_score(y_true, y_pred, average="macro", zero_division=0),
        "f1": f1_score(y_true, y_pred, average="macro", zero_division=0),
        "kappa_linear": kappa(y_true, y_pred, "linear"),
        "kappa_quadratic": kappa(y_true, y_pred, "quadratic"),
        "dense_accuracy": dense_accuracy(y_true, y_pred),
        "auc_ovr": macro_auc(y_true, probabilities) if probabilities is not None else np.nan,
    }
    return {key: float(value) for key, value in result.items()}


def bootstrap_ci(y_true, y_pred, statistic, n_resamples=2000, confidence=0.95, seed=0):
    """Percentile bootstrap confidence interval of ``statistic(y_true, y_pred)``.

    Cases (images or subjects) are resampled with replacement, keeping each
    true/predicted pair together (scipy.stats.bootstrap, paired).
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if len(y_true) < 2:
        return (float("nan"), float("nan"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate resamples give NaN, ignored below
        result = bootstrap(
            (y_true, y_pred),
            statistic,
            paired=True,
            vectorized=False,
            n_resamples=n_resamples,
            confidence_level=confidence,
            method="percentile",
            random_state=np.random.default_rng(seed),
        )
        values = result.bootstrap_distribution
    values = values[np.isfinite(values)]
    if values.size == 0:
        return (float("nan"), float("nan"))
    tail = 100 * (1 - confidence) / 2
    return (float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail)))


# ----------------------------------------------------------------------------
# Fusion of projections
# ----------------------------------------------------------------------------


def fuse(
    tables: dict[str, pd.DataFrame],
    members: tuple[str, ...],
    drop_incomplete: bool = False,
    by: str = "subject",
) -> tuple[pd.DataFrame, list[str]]:
    """Average the probabilities of ``members`` projections per subject.

    Args:
        tables: projection -> prediction table (CSV columns).
        members: the projections to fuse, e.g. ("CC_R", "MLO_R").
        drop_incomplete: drop subjects lacking a projection or whose true
            labels disagree, instead of stopping with an error.
        by: "subject" (match rows by subject id) or "position" (the
            reference: row i of every projection is the same subject).

    Returns:
        (fused table with subject, true_label, A..D, predicted_label; the
        list of dropped subjects with the reason).

    Raises:
        DatasetError: listing the subjects that lack a projection or disagree.
    """
    missing = [p for p in members if p not in tables]
    if missing:
        raise DatasetError(
            f"cannot fuse {'+'.join(members)}: no predictions for {', '.join(missing)}"
        )
    frames = []
    for projection in members:
        table = tables[projection].copy()
        if by == "position":
            table["subject"] = [f"row{i}" for i in range(len(table))]
        duplicated = table["subject"][table["subject"].duplicated()].unique()
        if len(duplicated):
            raise DatasetError(
                f"{projection}: subject ids appear more than once: {', '.join(map(str, duplicated[:10]))}"
                " (file names must be <subject>_<CLASS>_<PROJ>.png)"
            )
        frames.append(table.assign(projection=projection))
    stacked = pd.concat(frames, ignore_index=True)
    grouped = stacked.groupby("subject", sort=False)
    complete = grouped["projection"].nunique() == len(members)
    agreeing = grouped["true_label"].nunique() == 1
    problems = []
    lacking = complete.index[~complete]
    for subject in lacking:
        have = set(stacked.loc[stacked["subject"] == subject, "projection"])
        problems.append(f"{subject} lacks {', '.join(p for p in members if p not in have)}")
    for subject in agreeing.index[~agreeing & complete]:
        labels = stacked.loc[stacked["subject"] == subject, ["projection", "true_label"]]
        pairs = ", ".join(f"{p}={t}" for p, t in labels.itertuples(index=False))
        problems.append(f"{subject} has different true labels ({pairs})")
    if problems and not drop_incomplete:
        listing = "\n  ".join(problems[:20]) + ("\n  ..." if len(problems) > 20 else "")
        raise DatasetError(
            f"cannot fuse {'+'.join(members)} for {len(problems)} subject(s):\n  {listing}\n"
            "Set drop_incomplete=True to leave them out."
        )
    keep = complete & agreeing
    if not keep.any():  # else scikit-learn fails later on an empty array, after some writing
        raise DatasetError(
            f"cannot fuse {'+'.join(members)}: no subject has all of {', '.join(members)} "
            f"with one true label ({len(problems)} subject(s) left out, e.g. {problems[0]}); "
            "check that the prediction files come from the same test set"
        )
    kept = stacked[stacked["subject"].isin(keep.index[keep])]
    fused = kept.groupby("subject", sort=True).agg(
        true_label=("true_label", "first"), **{c: (c, "mean") for c in CLASSES}
    )
    fused["predicted_label"] = [CLASSES[i] for i in fused[list(CLASSES)].to_numpy().argmax(axis=1)]
    return fused.reset_index(), problems


def check_model_sets(tables: dict[str, pd.DataFrame], members: tuple[str, ...]) -> None:
    """Refuse to fuse projections whose predictions come from different model sets.

    The set of a prediction file is the folder holding its model's
    ``<PROJ>_model/`` (``attrs['model_set']``, set by ``read_predictions``
    from the file's provenance columns); files without provenance, or whose
    model file is no longer where it says, are not checked. Re-predicting one projection with another model, next to older
    files of the others, is the mistake this catches.
    """
    sets = {p: tables[p].attrs.get("model_set") for p in members}
    known = {p: s for p, s in sets.items() if s is not None}
    if len(set(known.values())) > 1:
        listing = "\n  ".join(f"{p}: {s}" for p, s in known.items())
        raise DatasetError(
            f"cannot fuse {'+'.join(members)}: the predictions come from different model sets:"
            f"\n  {listing}\nPredict all projections with the same models "
            "(Prediction_ResNet.py --projection all --models-root ...), or set "
            "allow_mixed_models=True if mixing them is intended."
        )


def group_predictions(
    tables: dict[str, pd.DataFrame],
    drop_incomplete: bool = False,
    by: str = "subject",
    allow_mixed_models: bool = False,
) -> tuple[dict[str, pd.DataFrame], dict[str, str]]:
    """Predictions of every computable group of ``GROUPS``; notes say why others are missing.

    Single projections are used as they are; sides and total are fused, and
    refused when their projections were predicted by different model sets
    (``check_model_sets``) unless ``allow_mixed_models``.
    """
    groups, notes = {}, {}
    for group in GROUPS:
        members = GROUP_MEMBERS[group]
        absent = [p for p in members if p not in tables]
        if absent:
            notes[group] = f"not computed: no predictions for {', '.join(absent)}"
            continue
        unlabelled = [p for p in members if tables[p]["true_label"].isna().any()]
        if unlabelled:  # predicted with Prediction_ResNet.py --images
            notes[group] = (
                f"not computed: {', '.join(unlabelled)} predictions have images without a true "
                "label (Prediction_ResNet.py --images); figures of merit need labels"
            )
            continue
        if len(members) == 1:
            # canonical row order, so that bootstrap intervals do not depend on it
            groups[group] = tables[group].sort_values(["subject", "filename"], ignore_index=True)
            continue
        if not allow_mixed_models:
            check_model_sets(tables, members)
        fused, dropped = fuse(tables, members, drop_incomplete=drop_incomplete, by=by)
        groups[group] = fused
        if dropped:
            notes[group] = f"{len(dropped)} subject(s) left out: " + "; ".join(dropped[:5])
    return groups, notes


def metrics_table(
    groups: dict[str, pd.DataFrame], n_resamples: int = 2000, seed: int = 0
) -> pd.DataFrame:
    """The metrics.csv table: one row per group of GROUPS (NaN where not computable)."""
    rows = {}
    for group in GROUPS:
        if group not in groups or groups[group].empty:
            rows[group] = {}
            continue
        table = groups[group]
        y_true = label_indices(table["true_label"])
        probabilities = table[list(CLASSES)].to_numpy(np.float64)
        y_pred = probabilities.argmax(axis=1)
        row = figures_of_merit(y_true, y_pred, probabilities)
        for name, function in (
            ("accuracy", accuracy_score),
            ("kappa_linear", lambda t, p: kappa(t, p, "linear")),
        ):
            low, high = bootstrap_ci(y_true, y_pred, function, n_resamples=n_resamples, seed=seed)
            row[f"{name}_ci_low"], row[f"{name}_ci_high"] = low, high
        rows[group] = row
    table = pd.DataFrame.from_dict(rows, orient="index").reindex(
        index=list(GROUPS), columns=METRICS_COLUMNS
    )
    table["n"] = table["n"].astype("Int64")  # a count, empty where not computed
    table.index.name = "group"
    return table


def write_metrics_csv(table: pd.DataFrame, path: str | Path) -> Path:
    """metrics.csv, written atomically: other scripts read it, a half file would mislead them."""
    return atomic_write(path, lambda target: table.to_csv(target, float_format="%.6f"))


def plot_confusion_matrices(table: pd.DataFrame, title: str, path: str | Path | None = None):
    """Counts and row-normalised confusion matrices side by side (scikit-learn displays)."""
    y_true = label_indices(table["true_label"])
    y_pred = label_indices(table["predicted_label"])
    figure, axes = plt.subplots(1, 2, figsize=(9.5, 4.2))
    for axis, normalize, subtitle, fmt in (
        (axes[0], None, "counts", "d"),
        (axes[1], "true", "row-normalised (recall per class)", ".2f"),
    ):
        matrix = confusion_matrix(y_true, y_pred, labels=LABELS, normalize=normalize)
        display = ConfusionMatrixDisplay(matrix, display_labels=list(CLASSES))
        display.plot(ax=axis, cmap="Blues", values_format=fmt, colorbar=False)
        axis.set_title(subtitle, fontsize=10)
        axis.set_xlabel("predicted class")
        axis.set_ylabel("true class")
    figure.suptitle(title)
    figure.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=300)
    return figure


# ----------------------------------------------------------------------------
# Label-free checks: do the views of one woman agree?
# ----------------------------------------------------------------------------


def expected_density(probabilities) -> np.ndarray:
    """Expected class in class units (0 = A ... 3 = D) of (N, 4) probability rows."""
    probabilities = np.asarray(probabilities, np.float64)
    return probabilities @ np.arange(len(CLASSES), dtype=np.float64)


def view_consistency(tables: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, dict[str, float]]:
    """How well the predictions of one subject's views agree; no true label needed.

    A woman's two breasts almost always share a density class, and the CC and
    MLO views of one breast show the same tissue, so disagreement between them
    is a sign of a model that does not transfer, visible on unlabelled images
    (``Prediction_ResNet.py --images``).

    Args:
        tables: projection -> prediction table (CSV columns: subject, A..D, ...),
            as ``predictions.read_predictions`` returns them.

    Returns:
        (one row per subject: each view's predicted class and expected density
        ``density_<PROJ>`` (0 = A ... 3 = D), each side's fused class and density
        (probabilities of its views averaged, as ``fuse`` does), ``side_difference``
        = |right - left| density and ``sides_agree``; a summary: ``subjects``,
        ``subjects_both_sides``, ``sides_agree`` (share of those whose fused sides
        have one class), ``mean_side_difference``, ``views_agree`` (share of
        sides with both views whose CC and MLO classes agree)).
    """
    rows = []
    for projection, table in tables.items():
        probabilities = table[list(CLASSES)].to_numpy(np.float64)
        rows.append(
            pd.DataFrame(
                {
                    "subject": table["subject"].astype(str).to_numpy(),
                    "projection": projection,
                    "predicted_label": table["predicted_label"].to_numpy(),  # the argmax
                    **{c: probabilities[:, i] for i, c in enumerate(CLASSES)},
                }
            )
        )
    views = pd.concat(rows, ignore_index=True)
    duplicated = views[views.duplicated(["subject", "projection"])]
    if len(duplicated):
        first = duplicated.iloc[0]
        raise DatasetError(
            f"{first['projection']}: subject {first['subject']} has more than one image; "
            "file names must be <subject>_<CLASS>_<PROJ>.png (or <subject>_<PROJ>.png unlabelled)"
        )
    views["density"] = expected_density(views[list(CLASSES)])
    per_subject = pd.DataFrame(index=sorted(views["subject"].unique()))
    per_subject.index.name = "subject"
    for projection in PROJECTIONS:
        of_view = views[views["projection"] == projection].set_index("subject")
        per_subject[f"class_{projection}"] = of_view["predicted_label"]
        per_subject[f"density_{projection}"] = of_view["density"]
    view_pairs = []
    for side, members in SIDES.items():
        of_side = views[views["projection"].isin(members)]
        mean = of_side.groupby("subject")[list(CLASSES)].mean()
        per_subject[f"class_{side}"] = pd.Series(
            np.array(CLASSES)[mean.to_numpy().argmax(axis=1)], index=mean.index
        )
        per_subject[f"density_{side}"] = pd.Series(expected_density(mean), index=mean.index)
        both = per_subject[[f"class_{p}" for p in members]].dropna()
        view_pairs.extend(both.iloc[:, 0] == both.iloc[:, 1])
    per_subject["side_difference"] = (
        per_subject["density_right"] - per_subject["density_left"]
    ).abs()
    has_both = per_subject[["class_right", "class_left"]].notna().all(axis=1)
    per_subject["sides_agree"] = (per_subject["class_right"] == per_subject["class_left"]).where(
        has_both
    )
    both_sides = per_subject[has_both]
    summary = {
        "subjects": len(per_subject),
        "subjects_both_sides": len(both_sides),
        "sides_agree": float(both_sides["sides_agree"].mean()) if len(both_sides) else np.nan,
        "mean_side_difference": float(both_sides["side_difference"].mean())
        if len(both_sides)
        else np.nan,
        "views_agree": float(np.mean(view_pairs)) if view_pairs else np.nan,
    }
    return per_subject.reset_index(), summary
