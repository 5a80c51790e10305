"""A preview of a generated phantom dataset: one image per class and projection.

Kept apart from the generator, so that writing a dataset needs no plotting
library. Images and masks (255 = dense tissue) are read with OpenCV, as the
generator wrote them: making the preview loads no TensorFlow.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import matplotlib.pyplot as plt
import pandas as pd

from ..conventions import CLASSES, PROJECTIONS
from .phantoms import MANIFEST_NAME


def plot_examples(data_dir: str | Path, figure_path: str | Path, split: str | None = None) -> Path:
    """A classes x projections grid of one generated split, dense-mask contours in red."""
    data_dir = Path(data_dir)
    manifest = pd.read_csv(data_dir / MANIFEST_NAME, dtype={"subject": str})
    if split is None:
        split = next(s for s in ("test", "validation", "train") if (manifest["split"] == s).any())
    rows = manifest[manifest["split"] == split]
    figure, axes = plt.subplots(
        len(CLASSES), len(PROJECTIONS), figsize=(2.6 * len(PROJECTIONS), 3.1 * len(CLASSES))
    )
    for i, label in enumerate(CLASSES):
        subjects = rows[rows["class"] == label]["subject"].unique()
        for j, projection in enumerate(PROJECTIONS):
            axis = axes[i, j]
            axis.axis("off")
            if len(subjects) == 0:
                continue
            row = rows[(rows["subject"] == subjects[0]) & (rows["projection"] == projection)]
            row = row.iloc[0]
            image = cv2.imread(str(data_dir / row["file"]), cv2.IMREAD_GRAYSCALE)
            mask = cv2.imread(str(data_dir / row["mask"]), cv2.IMREAD_GRAYSCALE) > 127
            axis.imshow(image, cmap="gray", vmin=0, vmax=255)
            axis.contour(mask, levels=[0.5], colors="red", linewidths=0.6)
            axis.set_title(f"{label} {projection}  PD {row['percent_density']:.0f}%", fontsize=9)
    figure.suptitle(f"Synthetic phantoms ({split} split); red: dense-tissue mask", fontsize=11)
    figure.tight_layout()
    Path(figure_path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(figure_path, dpi=110)
    plt.close(figure)
    return Path(figure_path)
