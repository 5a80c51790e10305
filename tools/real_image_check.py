"""What the models say on unlabelled real mammograms: do a woman's views agree, does density follow gray?

    # from the root, after stage 0 and stage 2 on real images (Prediction_ResNet.py --images)
    python tools/real_image_check.py --predictions runs/real_pred_cbis \\
        --images runs/stage0_cbis --out runs/real_check

Real mammograms without density labels cannot score a model, but two things
can be checked without labels:

* **Agreement between views** (``metrics.view_consistency``): a woman's two
  breasts almost always share a density class, and the CC and MLO views of a
  breast show the same tissue. A model that transfers agrees with itself; one
  that reacts to what it never saw in training often does not.
* **Density against mean gray**: on real mammograms the breast's mean gray
  level alone separates fatty from dense breasts well (it is the baseline a
  model must beat). The Spearman rank correlation between each image's
  expected density (0 = A ... 3 = D, from the predicted probabilities) and its
  breast mean gray says whether the model at least follows that signal; a
  model near zero or negative has learned something else.

* **With labels** (a labelled test tree predicted by stage 2), the measure the
  team's held-out real sets are judged by: ROC AUC of dense (C + D) against
  non-dense (A + B), per image and per subject (views averaged), of the model's
  expected density and, on the same images, of the mean-gray baseline.

With a handful of images the first two are indications, not measurements. The same
command on a phantom set (``--images`` a ``Make_Phantoms.py`` output, its
``DenseMasks/`` left out) gives the in-domain reference: how much a model
agrees with itself on images like those it was trained on. Writes
``images.csv`` (one row per image), ``view_consistency.csv`` (one per
subject), ``summary.csv`` and ``density_vs_gray.png`` to ``--out``. Seconds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from breastdensity.conventions import (
    CLASSES,
    DENSE_MASKS,
    MASKS_FOLDER,
    PROJECTIONS,
    DatasetError,
)
from breastdensity.files import atomic_write
from breastdensity.metrics import (
    expected_density,
    is_dense,
    label_indices,
    view_consistency,
)
from breastdensity.predictions import read_predictions
from breastdensity.quiet import quiet_tensorflow

MARKERS = {"CC_R": "o", "CC_L": "s", "MLO_R": "^", "MLO_L": "v"}
MAX_LEGEND_SUBJECTS = 10


def read_prediction_folders(folders: list[Path]) -> dict[str, pd.DataFrame]:
    """Every projection's predictions of all folders, one table per projection."""
    tables: dict[str, list[pd.DataFrame]] = {p: [] for p in PROJECTIONS}
    for folder in folders:
        found = False
        for projection in PROJECTIONS:
            table = read_predictions(folder, projection)
            if table is not None:
                tables[projection].append(table)
                found = True
        if not found:
            raise DatasetError(f"{folder}: no predictions_<proj>.csv (run Prediction_ResNet.py)")
    return {p: pd.concat(t, ignore_index=True) for p, t in tables.items() if t}


def find_images(names: list[str], roots: list[Path]) -> list[Path]:
    """The image file of each name in the image folders (masks left out); one match each."""
    index: dict[str, list[Path]] = {}
    for root in roots:
        if not root.is_dir():
            raise DatasetError(f"image folder {root} does not exist")
        for path in root.rglob("*.png"):
            if not {MASKS_FOLDER, DENSE_MASKS} & set(path.relative_to(root).parts):
                index.setdefault(path.name, []).append(path)
    paths = []
    for name in names:
        matches = index.get(name, [])
        if len(matches) != 1:
            where = ", ".join(map(str, roots))
            problem = "not found" if not matches else f"found {len(matches)} times"
            raise DatasetError(f"{name}: {problem} in {where}; give the folders stage 2 predicted")
        paths.append(matches[0])
    return paths


def image_table(tables: dict[str, pd.DataFrame], roots: list[Path]) -> pd.DataFrame:
    """One row per image: subject, projection, predicted class, expected density, mean gray."""
    from breastdensity.baseline import breast_statistics  # reads images with TensorFlow

    frame = pd.concat(tables.values(), ignore_index=True)
    frame["density"] = expected_density(frame[list(CLASSES)])
    paths = find_images(frame["filename"].tolist(), roots)
    # every breast pixel (the trivial baseline's statistic), on the 0-1 scale
    frame["mean_gray"] = breast_statistics(paths)[:, 0] / 255.0
    columns = [
        "filename",
        *("subject", "projection", "true_label", "predicted_label"),
        *("density", "mean_gray"),
    ]
    return frame[columns].sort_values(["subject", "projection"], ignore_index=True)


def dense_auc(images: pd.DataFrame) -> dict[str, float]:
    """ROC AUC of dense (C + D) vs non-dense (A + B): the model's expected density and mean gray.

    Per image, and per subject (its views' density and gray averaged). NaN
    without labels on every image or with one side of the split only.
    """
    labels = images["true_label"]
    names = [
        f"dense_auc_{kind}_{level}" for level in ("image", "subject") for kind in ("model", "gray")
    ]
    if labels.isna().any() or labels.eq("").any():
        return dict.fromkeys(names, np.nan)
    per_subject = images.groupby("subject").agg(
        true_label=("true_label", "first"),
        density=("density", "mean"),
        mean_gray=("mean_gray", "mean"),
    )
    scores = {}
    for level, table in (("image", images), ("subject", per_subject)):
        dense = is_dense(label_indices(table["true_label"]))
        for kind, column in (("model", "density"), ("gray", "mean_gray")):
            name = f"dense_auc_{kind}_{level}"
            both = len(set(dense)) == 2
            scores[name] = float(roc_auc_score(dense, table[column])) if both else np.nan
    return scores


def plot_density_against_gray(images: pd.DataFrame, rho: float, path: Path) -> None:
    """Expected density against breast mean gray, one colour per subject, one marker per view."""
    figure, axis = plt.subplots(figsize=(6.4, 4.6))
    colours = plt.cm.tab10(np.arange(images["subject"].nunique()) % 10)
    for colour, (subject, group) in zip(colours, images.groupby("subject"), strict=True):
        for projection, view in group.groupby("projection"):
            axis.scatter(
                view["mean_gray"], view["density"], color=colour, marker=MARKERS[projection], s=60
            )
        if images["subject"].nunique() <= MAX_LEGEND_SUBJECTS:  # else colours only
            axis.plot([], [], color=colour, marker="o", linestyle="", label=subject)
    for projection, marker in MARKERS.items():
        axis.plot([], [], color="gray", marker=marker, linestyle="", label=projection)
    axis.set_yticks(range(len(CLASSES)), [f"{i} ({c})" for i, c in enumerate(CLASSES)])
    axis.set_ylim(-0.2, len(CLASSES) - 0.8)
    axis.set_xlabel("breast mean gray (0-1, every breast pixel)")
    axis.set_ylabel("expected density (class units)")
    axis.set_title(
        "Expected density (predicted) vs breast mean gray, one colour per subject\n"
        f"Spearman rho {rho:.2f} over {len(images)} images of {images['subject'].nunique()} subjects",
        fontsize=10,
    )
    axis.legend(fontsize=7, loc="best")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    atomic_write(path, lambda temporary: figure.savefig(temporary, dpi=110, format="png"))
    plt.close(figure)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--predictions", nargs="+", type=Path, required=True)
    parser.add_argument("--images", nargs="+", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    matplotlib.use("Agg")  # files only, no windows
    quiet_tensorflow()  # after the arguments: --help answers at once

    tables = read_prediction_folders(args.predictions)
    images = image_table(tables, args.images)
    per_subject, summary = view_consistency(tables)
    rho = float(spearmanr(images["density"], images["mean_gray"]).statistic)
    summary = {"images": len(images), **summary, "spearman_density_gray": rho, **dense_auc(images)}

    args.out.mkdir(parents=True, exist_ok=True)
    tables_out = {
        "images.csv": images,
        "view_consistency.csv": per_subject,
        "summary.csv": pd.DataFrame([summary]),
    }
    for name, table in tables_out.items():
        atomic_write(
            args.out / name,
            lambda temporary, table=table: table.to_csv(
                temporary, index=False, float_format="%.4f"
            ),
        )
    plot_density_against_gray(images, rho, args.out / "density_vs_gray.png")

    print(images.to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    print(
        f"\n{summary['subjects']} subjects, {summary['images']} images: fused sides agree for "
        f"{summary['sides_agree']:.2f} of {summary['subjects_both_sides']} subjects (mean "
        f"|right - left| {summary['mean_side_difference']:.2f} classes); CC and MLO agree for "
        f"{summary['views_agree']:.2f} of sides; Spearman rho(density, mean gray) {rho:.2f}"
    )
    if np.isfinite(summary["dense_auc_model_image"]):
        print(
            "dense (C + D) vs non-dense ROC AUC, model / mean-gray baseline: per image "
            f"{summary['dense_auc_model_image']:.3f} / {summary['dense_auc_gray_image']:.3f}, "
            f"per subject {summary['dense_auc_model_subject']:.3f} / "
            f"{summary['dense_auc_gray_subject']:.3f}"
        )
    print(f"written: {args.out}/images.csv, view_consistency.csv, summary.csv, density_vs_gray.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
