"""Measure the shipped models against the project's goals on fresh phantoms.

    # fresh phantoms: 200 subjects at screening prevalence; 100 subjects (25 per class) for the maps
    python myproject/Make_Phantoms.py --out runs/eval_screening --subjects 0 0 200 --seed 1414 --prevalence screening
    python myproject/Make_Phantoms.py --out runs/eval_cam --subjects 0 0 100 --seed 2828
    python tools/measure_goals.py --models-root myproject --classification runs/eval_screening \\
        --maps runs/eval_cam --out runs/goals

Classification: stage 2 (``Prediction_ResNet.py``) predicts every projection,
then the package's metrics give, per subject (four projections averaged),
accuracy, linear kappa and dense (C + D) vs non-dense accuracy. Maps of the
CC_R model, each with the random map as the floor, scored against the true
dense masks with the evaluation notebook's functions (ROC AUC, pointing game,
deletion area, whether the map's maximum lies inside the breast): Grad-CAM of
the predicted class on the last residual module (the reference's map; its
deletion tracks the class probability) and the density map (Grad-CAM of the
ordinal density score one stage earlier, ``breastdensity.cam``; its deletion
tracks the expected density). Writes ``goals.csv`` and ``map_scores.csv`` to
``--out``. Takes 10-20 minutes on 2 shared cores at 256 px. ``--randomisation PHANTOMS``
adds the model-randomisation test of both maps (16 CC_R images, two random networks;
the evaluation notebook's bar: mean |rank correlation| below 0.5).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from breastdensity.conventions import DENSE_MASKS, PROJECTIONS, default_model_path
from breastdensity.quiet import quiet_tensorflow

REPO = Path(__file__).resolve().parents[1]

MAPS = {"gradcam": "Grad-CAM", "density_gradcam": "density map"}


def goals() -> dict[str, tuple[str, float]]:
    """Each measure's goal: (">=" or "<=", the bound)."""
    from breastdensity.explain.scoring import SANITY_THRESHOLD

    table = {
        "subject accuracy": (">=", 0.90),
        "subject linear kappa": (">=", 0.85),
        "subject dense vs non-dense": (">=", 0.95),
    }
    for name in MAPS.values():
        table |= {
            f"{name} ROC AUC (CC_R)": (">=", 0.75),
            f"{name} pointing game (CC_R)": (">=", 0.80),
            f"{name} maxima outside the breast (CC_R)": ("<=", 0.02),
            # the evaluation notebook's bar: maps of a random network must differ
            **{
                f"{name} |rank corr.| with random network {seed} (CC_R)": ("<=", SANITY_THRESHOLD)
                for seed in (0, 1)
            },
        }
    return table


def classification(models_root: Path, data: Path, out: Path) -> dict[str, float]:
    """Subject-level figures of merit of the four models on ``data/TestSet``."""
    from breastdensity.metrics import group_predictions, metrics_table
    from breastdensity.predictions import read_predictions

    predictions = out / "Prediction"
    subprocess.run(
        [
            sys.executable,
            str(REPO / "myproject" / "Prediction_ResNet.py"),
            "--projection",
            "all",
            "--models-root",
            str(models_root),
            "--test-root",
            str(data / "TestSet"),
            "--output-dir",
            str(predictions),
        ],
        check=True,
    )
    tables = {p: read_predictions(predictions, p) for p in PROJECTIONS}
    groups, _ = group_predictions({p: t for p, t in tables.items() if t is not None})
    total = metrics_table(groups).loc["total"]
    return {
        "subjects": int(total["n"]),
        "subject accuracy": float(total["accuracy"]),
        "subject linear kappa": float(total["kappa_linear"]),
        "subject dense vs non-dense": float(total["dense_accuracy"]),
    }


def maps(models_root: Path, data: Path, out: Path, projection: str = "CC_R") -> dict[str, float]:
    """Grad-CAM, the density map (and random) of one projection's model against the true masks."""
    from breastdensity.cam import to_image_size
    from breastdensity.explain.methods import Explainer
    from breastdensity.explain.scoring import (
        DENSITY_SCORE_VALUES,
        fidelity_curves,
        prepare_test_images,
        score_image,
    )
    from breastdensity.inference import load_model

    model = load_model(default_model_path(models_root, projection))
    explainer = Explainer(model)
    rows = []
    test_images = prepare_test_images(
        data / "TestSet", data / DENSE_MASKS / "TestSet", projection, explainer.size
    )
    for image in test_images:
        scored, cams = score_image(explainer, image, [*MAPS, "random"])
        for row in scored:
            if row["method"] in MAPS:
                cam = to_image_size(cams[row["method"]], image.original.shape)
                peak = np.unravel_index(int(np.argmax(cam)), cam.shape)
                row["maximum_inside_breast"] = bool(image.original[peak] > 0)
        # the random map's deletion under the density score too: the density map's floor
        random_row = next(row for row in scored if row["method"] == "random")
        curves = fidelity_curves(
            model, image.resized, cams["random"], image.network_region, DENSITY_SCORE_VALUES
        )
        scored.append(
            random_row
            | {
                "fidelity_of": "density score",
                "deletion_auc": curves.deletion_auc,
                "insertion_auc": curves.insertion_auc,
            }
        )
        rows += scored
    table = pd.DataFrame(rows)
    table.to_csv(out / "map_scores.csv", index=False)
    means = table.groupby(["method", "fidelity_of"])[
        ["auc", "pointing_game", "deletion_auc"]
    ].mean()
    results = {"map images": len(table[table["method"] == "gradcam"])}
    for method, name in MAPS.items():
        fidelity = "density score" if method == "density_gradcam" else "class"
        scores = table[table["method"] == method]
        results |= {
            f"{name} ROC AUC (CC_R)": means.loc[(method, fidelity), "auc"],
            f"{name} pointing game (CC_R)": means.loc[(method, fidelity), "pointing_game"],
            f"{name} deletion area (CC_R)": means.loc[(method, fidelity), "deletion_auc"],
            f"random-map deletion area, {fidelity} (CC_R)": means.loc[
                ("random", fidelity), "deletion_auc"
            ],
            f"{name} maxima outside the breast (CC_R)": float(
                1 - scores["maximum_inside_breast"].mean()
            ),
        }
    return results


def randomisation(
    models_root: Path, data: Path, images: int = 16, projection: str = "CC_R"
) -> dict[str, float]:
    """Model-randomisation test of both maps: ``images`` test images (seeded choice), two
    networks of the same architecture with random weights (seeds 0 and 1)."""
    import keras

    from breastdensity.explain.methods import Explainer
    from breastdensity.explain.scoring import network_input, prepare_test_images, sanity_check
    from breastdensity.inference import load_model
    from breastdensity.network import build_resnet

    model = load_model(default_model_path(models_root, projection))
    explainer = Explainer(model)
    test_images = prepare_test_images(
        data / "TestSet", data / DENSE_MASKS / "TestSet", projection, explainer.size
    )
    chosen = sorted(np.random.default_rng(0).choice(len(test_images), images, replace=False))
    inputs = np.concatenate([network_input(test_images[i].resized) for i in chosen])
    results = {}
    for seed in (0, 1):
        keras.utils.set_random_seed(seed)
        random_explainer = Explainer(build_resnet(explainer.size[0]))
        for row in sanity_check(explainer, random_explainer, inputs, list(MAPS)):
            name = MAPS[row["method"]]
            results[f"{name} |rank corr.| with random network {seed} (CC_R)"] = row[
                "rank_correlation"
            ]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-root", type=Path, default=REPO / "myproject")
    parser.add_argument("--classification", type=Path, help="phantoms for subject-level metrics")
    parser.add_argument(
        "--maps", type=Path, help="phantoms with DenseMasks/ for the Grad-CAM goals"
    )
    parser.add_argument(
        "--randomisation",
        type=Path,
        help="phantoms for the model-randomisation test of both maps (16 CC_R images)",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/goals"))
    args = parser.parse_args()
    quiet_tensorflow()  # after the arguments: --help answers at once
    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    if args.classification:
        results |= classification(args.models_root, args.classification, args.out)
    if args.maps:
        results |= maps(args.models_root, args.maps, args.out)
    if args.randomisation:
        results |= randomisation(args.models_root, args.randomisation)
    rows = []
    bounds = goals()
    for name, value in results.items():
        goal = bounds.get(name)
        met = None if goal is None else (value >= goal[1] if goal[0] == ">=" else value <= goal[1])
        rows.append(
            {
                "measure": name,
                "value": round(value, 4),
                "goal": "" if goal is None else f"{goal[0]} {goal[1]}",
                "met": "" if met is None else met,
            }
        )
    for method, name in MAPS.items():
        fidelity = "density score" if method == "density_gradcam" else "class"
        if f"{name} deletion area (CC_R)" in results:
            below = (
                results[f"{name} deletion area (CC_R)"]
                < results[f"random-map deletion area, {fidelity} (CC_R)"]
            )
            rows.append(
                {
                    "measure": f"{name} deletion below random",
                    "value": "",
                    "goal": "yes",
                    "met": below,
                }
            )
    table = pd.DataFrame(rows)
    table.to_csv(args.out / "goals.csv", index=False)
    print(table.to_string(index=False))
    if args.maps:
        # Grad-CAM explains the predicted class: for A and B that is fat, for C
        # and D dense tissue; the density map asks "what looks dense" of every image.
        scores = pd.read_csv(args.out / "map_scores.csv")
        scores = scores[scores["method"].isin(list(MAPS))]
        by_class = scores.pivot_table(
            index="predicted_label", columns="method", values=["auc", "pointing_game"]
        )
        print("\nMaps (CC_R) against the dense masks, by predicted class:")
        print(by_class.round(3).to_string())


if __name__ == "__main__":
    main()
