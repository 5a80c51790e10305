"""The trivial baseline a density CNN must beat on the phantoms.

Logistic regression on two global statistics of the breast pixels (their mean
and standard deviation). If this already classified the phantoms well, the
dataset would be too easy: the class would be given away by brightness
rather than by how much of the breast is dense tissue.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

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


def trivial_baseline(data_dir: str | Path, train_split: str = "train", test_split: str = "test"):
    """Fit on one split of a generated dataset, evaluate on another.

    Returns:
        dict with per-image accuracy and linear-weighted kappa on the test
        split, and the number of train/test images.
    """
    import pandas as pd
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, cohen_kappa_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data_dir = Path(data_dir)
    manifest = pd.read_csv(data_dir / "manifest.csv", dtype={"subject": str})
    train = manifest[manifest["split"] == train_split]
    test = manifest[manifest["split"] == test_split]
    if train.empty or test.empty:
        raise ValueError(f"{data_dir}: need both a {train_split} and a {test_split} split")
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    model.fit(breast_statistics(data_dir / train["file"]), train["class"])
    predicted = model.predict(breast_statistics(data_dir / test["file"]))
    return {
        "accuracy": float(accuracy_score(test["class"], predicted)),
        "kappa_linear": float(cohen_kappa_score(test["class"], predicted, weights="linear")),
        "train_images": len(train),
        "test_images": len(test),
    }
