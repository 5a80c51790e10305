"""The trivial baseline a density CNN must beat on the phantoms.

Logistic regression on two global statistics of the breast pixels (their mean
and standard deviation). If this already classified the phantoms well, the
dataset would be too easy: the class would be given away by brightness
rather than by how much of the breast is dense tissue.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from .conventions import CLASSES
from .metrics import figures_of_merit, fuse, label_indices
from .preprocessing import read_grayscale


def breast_statistics(paths) -> np.ndarray:
    """(N, 2) mean and standard deviation of the non-zero (breast) pixels of each image."""
    features = []
    for path in paths:
        image = read_grayscale(path)
        breast = image[image > 0]
        if breast.size == 0:
            raise ValueError(f"{path}: no breast pixel (the image is all zero)")
        features.append((breast.mean(), breast.std()))
    return np.asarray(features, dtype=np.float64)


def _scores(table: pd.DataFrame, prefix: str) -> dict[str, float]:
    """Accuracy, linear kappa and dense accuracy of a prediction table (``metrics``' definitions)."""
    y_true = label_indices(table["true_label"])
    y_pred = table[list(CLASSES)].to_numpy().argmax(axis=1)
    merit = figures_of_merit(y_true, y_pred)
    return {
        f"{prefix}_{name}": merit[name] for name in ("accuracy", "kappa_linear", "dense_accuracy")
    }


def trivial_baseline(
    train_dir: str | Path,
    test_dir: str | Path | None = None,
    train_split: str = "train",
    test_split: str = "test",
) -> dict:
    """Fit on one generated split, evaluate on another, per image and per subject.

    Args:
        train_dir: a generated dataset (with manifest.csv) holding ``train_split``.
        test_dir: the dataset holding ``test_split`` (default: train_dir).

    Returns:
        dict with accuracy, linear kappa and dense-vs-non-dense accuracy per
        image, and the same per subject (the four projections fused by
        ``metrics.fuse``, as the CNN's ``total``), plus image counts.
    """
    train_dir = Path(train_dir)
    test_dir = Path(test_dir) if test_dir is not None else train_dir
    train_manifest = pd.read_csv(train_dir / "manifest.csv", dtype={"subject": str})
    test_manifest = pd.read_csv(test_dir / "manifest.csv", dtype={"subject": str})
    train = train_manifest[train_manifest["split"] == train_split]
    test = test_manifest[test_manifest["split"] == test_split].reset_index(drop=True)
    if train.empty or test.empty:
        raise ValueError(
            f"need a {train_split} split in {train_dir} and a {test_split} split in {test_dir}"
        )
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    model.fit(breast_statistics(train_dir / train["file"]), train["class"])
    probabilities = model.predict_proba(breast_statistics(test_dir / test["file"]))
    table = pd.DataFrame(probabilities, columns=list(model.classes_)).reindex(
        columns=list(CLASSES), fill_value=0.0
    )
    table["subject"], table["true_label"] = test["subject"], test["class"]
    table["filename"], table["projection"] = test["file"], test["projection"]
    # the same table layout as the CNN's prediction files, so the same fusion applies
    per_projection = {p: group for p, group in table.groupby("projection")}
    fused, _ = fuse(per_projection, tuple(per_projection))
    return {
        **_scores(table, "image"),
        **_scores(fused, "subject"),
        "train_images": len(train),
        "test_images": len(test),
        "test_subjects": len(fused),
    }
