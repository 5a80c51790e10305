"""The thesis' comparison on this machine: ResNet, EfficientNet and ViT with the same CPU budget.

    # from the root; about 70 minutes on 2 CPU cores with the defaults
    python tools/compare_backbones.py --work runs/backbones

Every backbone gets the same recipe and the same minutes of training (``--minutes``):

1. **Phantoms.** ``Make_Phantoms.py`` makes a training set (150 + 30 subjects, all
   four projections, balanced classes), 200 fresh subjects at screening prevalence
   to classify and 40 more (CC_R images with their true dense tissue) for the maps.
   A two-epoch run measures each backbone's seconds per training image; the
   number of epochs that fills ``--minutes`` follows. Then one view-agnostic network
   per backbone (128 px, Adam 1e-3, cosine schedule, photometric augmentation).
2. **Scores on phantoms.** Stage 2 on the 200 subjects (``measure_goals.classification``:
   accuracy, linear kappa, dense vs non-dense, the four projections fused per subject);
   Grad-CAM of the predicted class on the layer each model names (on a ViT also attention
   rollout and Chefer's relevance), against the true dense tissue (``explain.scoring``:
   ROC AUC, pointing game, deletion area, and the same for a random map, the floor).
3. **Real films.** ``mias_cv.py``: 5-fold cross-validation by woman on mini-MIAS, each
   fold's network started from the backbone's phantom network and trained for
   ``--fold-minutes`` (epochs from the same seconds per image): fatty vs dense ROC AUC,
   Kendall tau of the expected density, accuracy and linear kappa of the class. Skipped, with a message, without MIAS.

Writes ``comparison.csv`` (one row per backbone), ``scores/<backbone>/map_scores.csv``
and ``maps.png`` (Grad-CAM of each backbone, and a ViT's rollout and Chefer maps, on the
same phantoms, true dense tissue outlined) to ``--work``; finished trainings are reused
when the command is run again.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

from breastdensity.conventions import CLASSES, DENSE_MASKS, FINAL_WEIGHTS, default_model_path
from breastdensity.quiet import quiet_tensorflow

REPO = Path(__file__).resolve().parents[1]
MYPROJECT = REPO / "myproject"
COMPARED = ("resnet", "efficientnet", "vit-tiny")  # the thesis' two and the reference
IMAGE_SIZE = 128  # every backbone at the same side: what the CPU budget affords
RECIPE = [
    "--img-size", str(IMAGE_SIZE), "--batch-size", "16", "--optimizer", "adam",
    "--learning-rate", "1e-3", "--lr-schedule", "cosine", "--photometric-augmentation",
]  # fmt: skip
PHANTOMS = {  # folder -> Make_Phantoms.py flags
    "phantoms": ["--subjects", "150", "30", "0", "--seed", "2026"],
    "eval_screening": [
        "--subjects",
        "0",
        "0",
        "200",
        "--seed",
        "1414",
        "--prevalence",
        "screening",
    ],
    "eval_cam": ["--subjects", "0", "0", "40", "--seed", "2828"],
}
FIGURE_IMAGES = 4  # phantoms in the figure, one per class


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train and score the backbones with the same CPU budget (module docstring).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "backbones")
    parser.add_argument("--backbones", nargs="+", default=list(COMPARED))
    parser.add_argument(
        "--minutes", type=float, default=6.0, help="training time of each phantom network"
    )
    parser.add_argument(
        "--fold-minutes", type=float, default=2.0, help="training time of each MIAS fold network"
    )
    parser.add_argument(
        "--mias", type=Path, default=None, help="mini-MIAS folder; default: as tools/mias_cv.py"
    )
    parser.add_argument("--no-mias", action="store_true", help="phantoms only")
    return parser.parse_args(argv)


def run(command: list[str]) -> None:
    print("$", " ".join(command), flush=True)
    subprocess.run([sys.executable, *command], cwd=MYPROJECT, check=True)


def make_phantoms(work: Path) -> None:
    for folder, flags in PHANTOMS.items():
        if not (work / folder / "manifest.csv").is_file():
            run(["Make_Phantoms.py", "--out", str(work / folder), "--size", "256", "208", *flags])


def calibrate(work: Path, backbone: str) -> tuple[float, int]:
    """Training seconds per image of ``backbone``, from the second epoch of a short run, and
    the number of training images of that run."""
    root = work / "calibration" / backbone
    history = root / "CC_R_model" / "history.csv"
    if not history.is_file():
        run(
            ["Train_ResNet.py", "--projection", "all", "--view-agnostic", "--backbone", backbone,
             "--data-root", str(work / "phantoms"), "--models-root", str(root), "--epochs", "2",
             *RECIPE]
        )  # fmt: skip
    config = json.loads((root / "CC_R_model" / "training_config.json").read_text())
    # the second epoch: the first also traces the graph and fills the image cache
    images = config["train_images"]
    return float(pd.read_csv(history)["seconds"].iloc[1]) / images, images


def train_on_phantoms(work: Path, backbone: str, epochs: int) -> tuple[Path, float]:
    """The backbone's phantom network (trained unless it exists) and its training minutes."""
    root = work / "models" / backbone
    if not (root / "CC_R_model" / FINAL_WEIGHTS).is_file():
        run(
            ["Train_ResNet.py", "--projection", "all", "--view-agnostic", "--backbone", backbone,
             "--data-root", str(work / "phantoms"), "--models-root", str(root),
             "--epochs", str(epochs), *RECIPE]
        )  # fmt: skip
    history = pd.read_csv(root / "CC_R_model" / "history.csv")
    return root, float(history["seconds"].sum()) / 60


def map_scores(model, data: Path, out: Path) -> tuple[dict[str, float], dict]:
    """Grad-CAM of the predicted class (on a ViT also attention rollout and Chefer's relevance)
    and a random map against the true dense tissue of the CC_R phantoms."""
    from breastdensity.explain.methods import METHOD_NAMES, TRANSFORMER_METHODS, Explainer
    from breastdensity.explain.scoring import prepare_test_images, score_image

    explainer = Explainer(model)  # the layer the model file names
    methods = ["gradcam", *(m for m in TRANSFORMER_METHODS if explainer.supports(m)), "random"]
    images = prepare_test_images(
        data / "TestSet", data / DENSE_MASKS / "TestSet", "CC_R", explainer.size
    )
    rows, shown = [], {METHOD_NAMES[m]: [] for m in methods if m != "random"}
    for image in images:
        scored, maps = score_image(explainer, image, methods)
        rows += scored
        for method in methods[:-1]:
            shown[METHOD_NAMES[method]].append((image, maps[method]))
    table = pd.DataFrame(rows)
    table.to_csv(out / "map_scores.csv", index=False)
    means = table.groupby("method")[["auc", "pointing_game", "deletion_auc"]].mean()
    scores = {}
    for method in methods:
        prefix = "map" if method == "gradcam" else method
        scores |= {
            f"{prefix}_auc": means.loc[method, "auc"],
            f"{prefix}_pointing_game": means.loc[method, "pointing_game"],
            f"{prefix}_deletion": means.loc[method, "deletion_auc"],
        }
    return scores, shown


def mias_scores(args, backbone: str, models_root: Path, per_image: float) -> dict[str, float]:
    """Pooled held-out scores of the backbone's 5-fold MIAS cross-validation."""
    import mias_cv  # beside this file: the script's folder is on the import path

    mias = mias_cv.find_mias(args.mias)
    if mias is None:
        return {}
    films_per_fold = len(list(mias.glob("*.pgm"))) * 4 / 5  # 4 of the 5 folds train
    epochs = max(1, round(args.fold_minutes * 60 / (per_image * films_per_fold)))
    work = args.work / "mias_cv"
    mias_cv.main(
        [*(["--mias", str(args.mias)] if args.mias else []), "--work", str(work),
         "--targets", "onehot", "--backbone", backbone, "--img-size", str(IMAGE_SIZE),
         "--epochs", str(epochs), "--init-from", str(models_root)]
    )  # fmt: skip
    summary = pd.read_csv(work / "summary.csv").set_index("score")
    column = mias_cv.score_column("onehot", backbone, phantoms=False)
    # training time of the five fold networks, from their histories (a second run of this
    # command reuses them and only predicts)
    histories = (work / column.removeprefix("expected_")).glob("fold*/models/*/history.csv")
    minutes = sum(pd.read_csv(history)["seconds"].sum() for history in histories) / 60
    return {
        "mias_fold_epochs": epochs,
        "mias_auc_f_vs_d": summary.loc[column, "auc_f_vs_d"],
        "mias_kendall_tau": summary.loc[column, "kendall_tau"],
        # the predicted class against F, G, D filed as A, B, C
        "mias_accuracy": summary.loc[column, "accuracy"],
        "mias_kappa_linear": summary.loc[column, "kappa_linear"],
        "mias_gray_auc_f_vs_d": summary.loc["gray_otsu", "auc_f_vs_d"],
        "mias_training_minutes": minutes,
    }


def figure(shown: dict[str, list], out: Path) -> None:
    """Each backbone's maps (rows: backbone and method) on the same phantoms, one per class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from breastdensity.cam import to_image_size

    first = next(iter(shown.values()))
    picks = [
        next(i for i, (image, _) in enumerate(first) if image.true_label == c) for c in CLASSES
    ]
    fig, axes = plt.subplots(
        len(shown),
        len(picks),
        figsize=(2.4 * len(picks) + 1.2, 2.7 * len(shown)),
        squeeze=False,
        layout="constrained",
    )
    for row, (backbone, maps) in enumerate(shown.items()):
        for column, index in enumerate(picks):
            image, cam = maps[index]
            axis = axes[row, column]
            axis.imshow(image.original, cmap="gray")
            axis.imshow(
                to_image_size(cam, image.original.shape), cmap="jet", alpha=0.45, vmin=0, vmax=1
            )
            axis.contour(image.mask, levels=[0.5], colors="white", linewidths=0.8)
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(f"true class {image.true_label}", fontsize=11)
            if column == 0:
                axis.set_ylabel(backbone, fontsize=12)
    # the colour bar without the overlay's transparency: the scale itself
    scale = plt.cm.ScalarMappable(cmap="jet", norm=plt.Normalize(0, 1))
    fig.colorbar(scale, ax=axes, shrink=0.5, label="map value, scaled to 0-1 per image")
    fig.suptitle(
        "Maps of the predicted class (rows: network, method) on phantoms\n"
        "same CPU budget per network; white outline: the true dense tissue"
    )
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_arguments(argv)
    args.work = args.work.resolve()  # the scripts run from myproject/
    quiet_tensorflow()
    import measure_goals  # beside this file: the script's folder is on the import path

    args.work.mkdir(parents=True, exist_ok=True)
    make_phantoms(args.work)
    rows, shown = [], {}
    for backbone in args.backbones:
        per_image, images = calibrate(args.work, backbone)
        epochs = max(1, round(args.minutes * 60 / (per_image * images)))
        models_root, minutes = train_on_phantoms(args.work, backbone, epochs)
        from breastdensity.inference import load_model

        model = load_model(default_model_path(models_root, "CC_R"))
        out = args.work / "scores" / backbone
        out.mkdir(parents=True, exist_ok=True)
        row = {
            "backbone": backbone,
            "parameters": model.count_params(),
            "seconds_per_image": per_image,
            "phantom_epochs": epochs,
            "phantom_minutes": minutes,
            **measure_goals.classification(models_root, args.work / "eval_screening", out),
        }
        scores, maps = map_scores(model, args.work / "eval_cam", out)
        row |= scores
        shown |= {f"{backbone}\n{method}": images for method, images in maps.items()}
        if not args.no_mias:
            row |= mias_scores(args, backbone, models_root, per_image)
        rows.append(row)
        table = pd.DataFrame(rows)
        table.to_csv(args.work / "comparison.csv", index=False, float_format="%.4f")
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"), flush=True)
    figure(shown, args.work / "maps.png")
    print(f"{args.work / 'comparison.csv'}, {args.work / 'maps.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
