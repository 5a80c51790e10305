"""The LaTIM poster's comparison on phantoms: method x {pixel, region} x {ROC AUC, best Dice, deletion}.

The poster compares five gradient attributions — vanilla backpropagation (BP),
Integrated Gradients from black (IGB) and from black and white (IGBW),
Expected Gradients (EG) and Deconvolution (D) — each plain, with SmoothGrad
(SG) and with SmoothGrad squared (SG²), as absolute *pixel* maps and as XRAI
*region* maps, against hand-drawn masks and by deletion fidelity. Here the
masks are the phantoms' exact dense-tissue masks, and a uniform random map is
the floor (its region form too).

``compare_image`` scores one image (used by ``Explainability_evaluation.ipynb``),
``summarise`` averages the rows, ``plot_comparison`` draws the poster-style bars.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..cam import normalize_maps, to_image_size
from ..conventions import CLASSES
from ..files import atomic_write
from .attributions import SMOOTHINGS, GradientAttributions
from .regions import segment_regions, xrai_map
from .scoring import PreparedImage, best_dice, fidelity_curves, network_input, roc_auc

POSTER_METHODS = {
    "backprop": "BP",
    "ig_black": "IGB",
    "ig_black_white": "IGBW",
    "expected_gradients": "EG",
    "deconvolution": "D",
}
FORMS = ("pixel", "region")
METRICS = {
    "auc": "ROC AUC (higher is better)",
    "best_dice": "best Dice (higher is better)",
    "deletion_auc": "deletion area (lower is better)",
}
COMPARISON_COLUMNS = [
    "image",
    "projection",
    "true_label",
    "predicted_label",
    "method",
    "label",
    "smoothing",
    "form",
    "auc",
    "best_dice",
    "deletion_auc",
]


def poster_maps(attributions: GradientAttributions, inputs, target: int, methods, rng) -> dict:
    """(method, smoothing) -> (S, S) non-negative pixel map, plus ("random", "none")."""
    maps = {}
    for method in methods:
        maps[(method, "none")] = attributions.maps(method, inputs, [target])[0]
        smooth, squared = attributions.smoothed(method, inputs, [target])  # same noisy copies
        maps[(method, "SG")], maps[(method, "SG²")] = smooth[0], squared[0]
    maps[("random", "none")] = rng.random(inputs.shape[1:3])
    return maps


def compare_image(
    attributions: GradientAttributions,
    image: PreparedImage,
    methods=tuple(POSTER_METHODS),
    fidelity_steps: int = 20,
    seed: int = 0,
):
    """Rows of the comparison for one image, and its maps {(method, smoothing, form): map}.

    Every map explains the predicted class. Region maps are ``regions.xrai_map``
    of the pixel map on the segments of the network-size image. ROC AUC and best
    Dice are computed at the original size inside the breast (as
    ``scoring.score_image`` does), deletion on the network input.
    """
    model = attributions.model
    inputs = network_input(image.resized)
    predicted = int(np.argmax(model.predict(inputs, verbose=0)[0]))
    regions = segment_regions(image.resized)
    rng = np.random.default_rng([seed, sum(map(ord, image.name))])
    pixel_maps = poster_maps(attributions, inputs, predicted, methods, rng)
    rows, maps = [], {}
    for (method, smoothing), pixel in pixel_maps.items():
        for form in FORMS:
            values = pixel if form == "pixel" else xrai_map(pixel, regions)
            cam = normalize_maps(values[None])[0].astype(np.float32)
            maps[(method, smoothing, form)] = cam
            original = to_image_size(cam, image.original.shape)
            curves = fidelity_curves(
                model, image.resized, cam, image.network_region, predicted, fidelity_steps
            )
            rows.append(
                {
                    "image": image.name,
                    "projection": image.projection,
                    "true_label": image.true_label,
                    "predicted_label": CLASSES[predicted],
                    "method": method,
                    "label": POSTER_METHODS.get(method, method),
                    "smoothing": smoothing,
                    "form": form,
                    "auc": roc_auc(original, image.mask, image.region),
                    "best_dice": best_dice(original, image.mask, image.region),
                    "deletion_auc": curves.deletion_auc,
                }
            )
    return rows, maps


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard error of each metric per (method, smoothing, form), in the poster's order."""
    grouped = table.groupby(["label", "smoothing", "form"], sort=False)[list(METRICS)]
    summary = grouped.mean().join(grouped.sem(), rsuffix="_sem")
    summary.insert(0, "images", grouped.size())
    order = [*POSTER_METHODS.values(), "random"]
    return summary.reset_index().sort_values(
        ["form", "label", "smoothing"],
        key=lambda column: column.map(
            {name: i for i, name in enumerate([*FORMS, *order, *SMOOTHINGS])}
        ),
    )


def plot_comparison(summary: pd.DataFrame, title: str, path=None):
    """The poster's result plots: per metric and form, bars per method and smoothing, random dashed.

    Args:
        summary: ``summarise`` output.
        title: figure title (say what was compared, on how many images).
        path: where to save the PNG (None: only return the figure).
    """
    labels = [m for m in POSTER_METHODS.values() if m in set(summary.label)]
    colours = {"none": "#4c72b0", "SG": "#dd8452", "SG²": "#55a868"}
    width = 0.26
    figure, axes = plt.subplots(
        len(FORMS), len(METRICS), figsize=(4.4 * len(METRICS), 3.1 * len(FORMS)), sharey="col"
    )
    for row, form in enumerate(FORMS):
        part = summary[summary.form == form].set_index(["label", "smoothing"])
        for column, (metric, name) in enumerate(METRICS.items()):
            axis = axes[row, column]
            for k, smoothing in enumerate(SMOOTHINGS):
                keys = [(label, smoothing) for label in labels]
                means = [part[metric].get(key, np.nan) for key in keys]
                errors = [part[f"{metric}_sem"].get(key, np.nan) for key in keys]
                axis.bar(
                    np.arange(len(labels)) + (k - 1) * width,
                    means,
                    width,
                    yerr=errors,
                    color=colours[smoothing],
                    label="plain" if smoothing == "none" else smoothing,
                    capsize=2,
                    error_kw={"lw": 0.8},
                )
            if ("random", "none") in part.index:
                random_level = part.loc[("random", "none"), metric]
                axis.axhline(random_level, color="gray", ls="--", lw=1, label="random map")
            axis.set_xticks(np.arange(len(labels)), labels)
            axis.set_title(f"{form} maps: {name}", fontsize=9)
        axes[row, 0].set_ylabel(f"{form} maps")
    handles, names = axes[0, 0].get_legend_handles_labels()
    figure.legend(handles, names, loc="upper right", ncol=len(names), fontsize=8)
    figure.suptitle(title, fontsize=10, x=0.02, ha="left")
    figure.tight_layout(rect=(0, 0, 1, 0.95))
    if path is not None:
        atomic_write(path, lambda target: figure.savefig(target, dpi=110))
    return figure


__all__ = [
    "COMPARISON_COLUMNS",
    "FORMS",
    "METRICS",
    "POSTER_METHODS",
    "SMOOTHINGS",
    "compare_image",
    "plot_comparison",
    "poster_maps",
    "summarise",
]
