"""Figures of the README, assembled from what the pipeline wrote.

    python tools/readme_figures.py            # after stage 4 wrote myproject/MAPS/

* ``docs/figures/phantoms_grid.png``: one shipped synthetic subject per class
  (rows) and projection (columns) with its dense-tissue mask contour;
* ``docs/figures/gradcam_overlays.png``: one Grad-CAM overlay per class (rows) and
  projection (columns), from the stage-4 output folder;
* ``docs/figures/maps_vs_truth.png``: Grad-CAM of the predicted class and the
  density map of the shipped CC_R model against the true dense tissue, one
  shipped image per class.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from breastdensity.conventions import (
    CLASSES,
    DENSE_MASKS,
    PROJECTIONS,
    default_model_path,
)
from breastdensity.quiet import quiet_tensorflow

REPO = Path(__file__).resolve().parents[1]


def overlay_grid(maps_dir: Path, target: Path, root: Path = REPO / "myproject") -> None:
    """Grad-CAM of the predicted class on one test image per class (rows) and projection (columns).

    The images are those stage 4 mapped first (its ``cam_summary.csv``); the maps are computed
    again here so that all sixteen panels share one colour bar and short titles stay readable.
    """
    from breastdensity.cam import GradCam, to_image_size
    from breastdensity.inference import load_model
    from breastdensity.preprocessing import load_image, model_image_size, read_grayscale

    figure, axes = plt.subplots(
        len(CLASSES), len(PROJECTIONS), figsize=(10, 11.5), squeeze=False, layout="constrained"
    )
    shown = None
    for column, projection in enumerate(PROJECTIONS):
        model = load_model(default_model_path(root, projection))
        grad_cam, size = GradCam(model), model_image_size(model)
        summary = pd.read_csv(maps_dir / projection / "cam_summary.csv")
        for row, label in enumerate(CLASSES):
            axis = axes[row, column]
            axis.set_xticks([])
            axis.set_yticks([])
            chosen = summary[(summary.true_label == label) & (summary.status == "written")]
            if chosen.empty:
                continue
            path = root / "TestSet" / projection / "test" / label / chosen.iloc[0].file
            result = grad_cam(load_image(path, size)[None])  # maps (1, H, W) in [0, 1]
            gray = read_grayscale(path)  # (h, w), the image's real aspect
            cam = to_image_size(result.maps[0], gray.shape)
            predicted = CLASSES[int(result.classes[0])]
            probability = float(result.probabilities[0][result.classes[0]])
            axis.imshow(gray, cmap="gray", vmin=0, vmax=255)
            shown = axis.imshow(cam, cmap="jet", vmin=0, vmax=1, alpha=0.45)
            axis.set_title(f"true {label}, predicted {predicted} ({probability:.2f})", fontsize=9)
            if row == 0:
                axis.set_title(f"{projection}\n" + axis.get_title(), fontsize=10)
    if shown is not None:
        opaque = matplotlib.cm.ScalarMappable(shown.norm, shown.cmap)  # without the overlay's alpha
        figure.colorbar(
            opaque,
            ax=axes,
            shrink=0.5,
            label="Grad-CAM of the predicted class (1 = the map's maximum)",
        )
    figure.suptitle(
        "Grad-CAM of the predicted class: the shipped models on one test phantom per true class",
        fontsize=11,
    )
    figure.savefig(target, dpi=90)
    plt.close(figure)


def maps_against_truth(root: Path, target: Path, projection: str = "CC_R") -> None:
    """Grad-CAM and the density map of one shipped image per class, the true dense tissue outlined."""
    from breastdensity.cam import to_image_size
    from breastdensity.explain.methods import METHOD_NAMES, Explainer
    from breastdensity.explain.scoring import network_input, prepare_test_images
    from breastdensity.inference import load_model

    model = load_model(default_model_path(root, projection))
    explainer = Explainer(model)
    test_images = prepare_test_images(
        root / "TestSet", root / DENSE_MASKS / "TestSet", projection, explainer.size
    )
    methods = ("gradcam", "density_gradcam")
    figure, axes = plt.subplots(len(methods), len(CLASSES), figsize=(12, 7.4), squeeze=False)
    for column, label in enumerate(CLASSES):
        image = next(i for i in test_images if i.true_label == label)
        inputs = network_input(image.resized)
        predicted = CLASSES[int(np.argmax(model.predict(inputs, verbose=0)[0]))]
        for row, method in enumerate(methods):
            cam = to_image_size(explainer.explain(method, inputs)[0], image.original.shape)
            axis = axes[row, column]
            axis.imshow(image.original, cmap="gray", vmin=0, vmax=255)
            shown = axis.imshow(
                np.ma.masked_where(image.original == 0, cam), cmap="jet", vmin=0, vmax=1, alpha=0.45
            )
            axis.contour(image.mask, levels=[0.5], colors="white", linewidths=0.8)
            axis.set_title(
                f"{METHOD_NAMES[method]}\ntrue {label}, predicted {predicted}", fontsize=9
            )
            axis.axis("off")
    opaque = matplotlib.cm.ScalarMappable(
        shown.norm, shown.cmap
    )  # the bar without the overlay's alpha
    figure.colorbar(opaque, ax=axes, fraction=0.025, label="map value (0-1)")
    figure.suptitle(
        f"Shipped {projection} model, shipped TestSet: white line = true dense tissue (phantom ground truth)",
        fontsize=11,
    )
    figure.savefig(target, dpi=90, bbox_inches="tight")
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--maps", type=Path, default=REPO / "myproject" / "MAPS")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "figures")
    args = parser.parse_args()
    matplotlib.use("Agg")  # files only, no windows
    quiet_tensorflow()  # after the arguments: --help answers at once
    from breastdensity.data.phantom_plots import plot_examples

    args.out.mkdir(parents=True, exist_ok=True)
    plot_examples(REPO / "myproject", args.out / "phantoms_grid.png")  # shipped TestSet + manifest
    overlay_grid(args.maps, args.out / "gradcam_overlays.png")
    maps_against_truth(REPO / "myproject", args.out / "maps_vs_truth.png")
    print(f"figures in {args.out}")


if __name__ == "__main__":
    main()
