"""Cross-validation by woman on mini-MIAS: does a model trained on real films rank density?

    # from the root; MIAS is not in the repository: download mini-MIAS (PGM files and
    # Info.txt, research use, cite Suckling et al. 1994) and point --mias at it
    python tools/mias_cv.py --mias path/to/mini-mias --work runs/mias_cv

The films are put through stage 0 once (``--labels mias``), then split into
``--folds`` folds **by woman** (both films of a woman in one fold, folds
stratified by MIAS level). For every fold and every ``--targets`` choice one
network is trained with ``Train_ResNet.py`` on the other folds (both sides in
one projection folder: one view-agnostic network) for a fixed number of epochs,
and its final weights predict the held-out fold. Nothing of the held-out fold
chooses anything (no checkpoint selection, no early stopping).

Scores, per fold and pooled over the held-out predictions:

* ``auc_f_vs_d``: ROC AUC of the expected density (0 = A ... 3 = D) for
  fatty (F) against dense (D) films; ``auc_f_vs_gd`` for F against G + D;
* ``kendall_tau``: Kendall's tau of the expected density against F < G < D;
* ``accuracy``, ``kappa_linear`` (pooled only): of the predicted class against
  the MIAS level filed as a class (F, G, D -> A, B, C);
* the same for label-free baselines on the same films: the mean gray above
  the Otsu threshold (a plain crop of the breast) of the original film
  (``gray_otsu``) and of the stage-0 output (``gray_otsu_stage0``): what stage 0
  does to the density signal; and the mean gray over stage 0's breast mask
  (``gray_stage0_breast``).

Writes ``predictions.csv``, ``folds.csv`` (one row per fold, choice and score)
and ``summary.csv`` (pooled) to ``--work``; an interrupted run is continued
(finished folds are not retrained). On 2 CPU cores at 128 px: about 3 minutes
per fold and choice.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from scipy.stats import kendalltau
from skimage.filters import threshold_otsu
from sklearn.metrics import cohen_kappa_score, roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold

from breastdensity.conventions import (
    CLASSES,
    FINAL_WEIGHTS,
    PROJECTIONS,
    ImageRecord,
    image_file_name,
    model_dir,
)
from breastdensity.quiet import quiet_tensorflow

REPO = Path(__file__).resolve().parents[1]
SHARED_MIAS = REPO.parent / "shared" / "real-labelled" / "mias-train"
LEVEL_RANK = {"F": 0, "G": 1, "D": 2}
PROJECTION = "MLO_R"  # the folder name the one view-agnostic network trains in


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="5-fold cross-validation by woman on mini-MIAS (see the module docstring).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--mias",
        type=Path,
        default=None,
        help=f"mini-MIAS folder (PGM + Info.txt); default: the team's copy at {SHARED_MIAS}",
    )
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "mias_cv")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0, help="seed of the folds")
    parser.add_argument("--targets", nargs="+", default=["onehot", "ordinal"])
    parser.add_argument(
        "--backbone", default="resnet", help="Train_ResNet.py's --backbone of every fold network"
    )
    parser.add_argument("--img-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument(
        "--init-from",
        type=Path,
        default=REPO / "myproject",
        help="models root whose MLO_R model starts every fold (the phantom-trained models); "
        "'none' trains from random weights",
    )
    parser.add_argument(
        "--phantoms",
        type=Path,
        help="a Make_Phantoms.py output trained on together with the films (its TrainingSet/ "
        "and ValidationSet/, all four projections): the recipe of the shipped models",
    )
    parser.add_argument("--baseline-only", action="store_true", help="score the baselines only")
    return parser.parse_args(argv)


def find_mias(path: Path | None) -> Path | None:
    """The MIAS folder to use, or None (with a message) when the default copy is absent."""
    if path is not None:
        if not (path / "Info.txt").is_file():
            raise SystemExit(f"--mias {path}: no Info.txt there; is it the mini-MIAS folder?")
        return path
    if (SHARED_MIAS / "Info.txt").is_file():
        return SHARED_MIAS
    print(
        f"skipped: no mini-MIAS at {SHARED_MIAS} (the team's copy; a clone of the repository "
        "has none). Download mini-MIAS (research use; cite Suckling et al. 1994) and pass --mias."
    )
    return None


def run_stage0(mias: Path, out: Path) -> pd.DataFrame:
    """Stage 0 on every film (all to TrainingSet/; the folds split them), once."""
    if not (out / "manifest.csv").is_file():
        command = [
            sys.executable,
            "Preprocess_Mammograms.py",
            "--input",
            str(mias.resolve()),
            "--out",
            str(out.resolve()),
            "--labels",
            "mias",
            "--split",
            "1",
            "0",
            "0",
            "--workers",
            "2",
        ]
        subprocess.run(command, cwd=REPO / "myproject", check=True)
    manifest = pd.read_csv(out / "manifest.csv", dtype={"source_density": str})
    manifest["path"] = [str(out / f) for f in manifest["file"]]
    return manifest


def otsu_mean(image: np.ndarray) -> float:
    """Mean gray above the image's Otsu threshold: the breast of a plain crop."""
    return float(image[image > threshold_otsu(image)].mean())


def gray_baselines(manifest: pd.DataFrame, stage0: Path) -> pd.DataFrame:
    """Mean breast gray of each film: the same plain Otsu statistic on the original film
    and on the stage-0 output (what stage 0 does to the density signal), and the mean
    over stage 0's own breast mask."""
    otsu, otsu_after, breast_mean = [], [], []
    for row in manifest.itertuples(index=False):
        original = cv2.imread(row.source, cv2.IMREAD_UNCHANGED).astype(np.float32)
        otsu.append(otsu_mean(original))
        image = cv2.imread(str(stage0 / row.file), cv2.IMREAD_UNCHANGED).astype(np.float32)
        otsu_after.append(otsu_mean(image))
        breast = cv2.imread(str(stage0 / row.breast_mask), cv2.IMREAD_UNCHANGED) > 0
        breast_mean.append(float(image[breast].mean()))
    return manifest.assign(
        gray_otsu=otsu, gray_otsu_stage0=otsu_after, gray_stage0_breast=breast_mean
    )


def assign_folds(manifest: pd.DataFrame, folds: int, seed: int) -> pd.Series:
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    fold = np.full(len(manifest), -1)
    for k, (_, held_out) in enumerate(
        splitter.split(manifest, manifest["source_density"], groups=manifest["subject"])
    ):
        fold[held_out] = k
    return pd.Series(fold, index=manifest.index)


def write_fold_data(manifest: pd.DataFrame, fold: int, root: Path) -> None:
    """TrainingSet/ValidationSet of one fold as symbolic links; both sides in one folder."""
    for row in manifest.to_dict("records"):
        split = ("ValidationSet", "validation") if row["fold"] == fold else ("TrainingSet", "train")
        subject = f"{row['subject']}{row['projection'][-1]}"  # mias013R / mias013L
        label = row["class"]
        link = root / split[0] / PROJECTION / split[1] / label
        link = link / image_file_name(subject, label, PROJECTION)
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(Path(row["path"]).resolve())


def train_fold(args, targets: str, fold_root: Path) -> Path:
    """Train one fold's network (resumed if interrupted); its final weights."""
    if args.phantoms is None:
        trained = PROJECTION
        data = ["--projection", PROJECTION, "--data-root", str((fold_root / "data").resolve())]
    else:  # films and phantoms of every projection: one view-agnostic network
        trained = PROJECTIONS[0]
        data = ["--projection", "all", "--view-agnostic", "--data-root"]
        data += [str((fold_root / "data").resolve()), str(args.phantoms.resolve())]
    final = model_dir(fold_root / "models", trained) / FINAL_WEIGHTS
    if final.is_file():
        return final
    command = [
        sys.executable,
        "Train_ResNet.py",
        *data,
        "--models-root",
        str((fold_root / "models").resolve()),
        "--img-size",
        str(args.img_size),
        "--batch-size",
        str(args.batch_size),
        "--epochs",
        str(args.epochs),
        "--optimizer",
        "adam",
        "--learning-rate",
        str(args.learning_rate),
        "--lr-schedule",
        "cosine",
        "--photometric-augmentation",
        "--targets",
        targets,
        "--backbone",
        args.backbone,
    ]
    if str(args.init_from).lower() != "none":
        command += ["--init-from", str(args.init_from.resolve())]
    resume = model_dir(fold_root / "models", trained).is_dir()
    subprocess.run(command + (["--resume"] if resume else []), cwd=REPO / "myproject", check=True)
    return final


def score_column(targets: str, backbone: str = "resnet", phantoms: bool = False) -> str:
    """The column of one training choice's held-out expected density (and its work folder)."""
    name = targets + ("_phantoms" if phantoms else "")
    return f"expected_{name}" + ("" if backbone == "resnet" else f"_{backbone}")


def class_column(score: str) -> str:
    """The column of the predicted classes that go with the expected-density column ``score``."""
    return score.replace("expected_", "class_", 1)


def class_agreement(table: pd.DataFrame, score: str) -> dict[str, float]:
    """Accuracy and linear kappa of the predicted classes against MIAS' levels filed as
    classes (F, G, D -> A, B, C); empty for a score without predicted classes (a baseline)."""
    if not score.startswith("expected_") or class_column(score) not in table:
        return {}
    predicted, true = table[class_column(score)], table["class"]
    return {
        "accuracy": float((predicted == true).mean()),
        "kappa_linear": cohen_kappa_score(true, predicted, labels=list(CLASSES), weights="linear"),
    }


def predict(model_path: Path, rows: pd.DataFrame) -> np.ndarray:
    from breastdensity.inference import load_model, predict_records

    model = load_model(model_path)
    records = [
        ImageRecord(path=Path(p), label=c, subject=s)
        for p, c, s in zip(rows["path"], rows["class"], rows["subject"], strict=True)
    ]
    return predict_records(model, records, batch_size=16).probabilities


def scores(table: pd.DataFrame, column: str) -> dict[str, float]:
    """AUCs F vs D and F vs G+D, and Kendall's tau against F < G < D, of one score column."""
    rank = table["source_density"].map(LEVEL_RANK)
    ends = table[rank != 1]
    return {
        "auc_f_vs_d": roc_auc_score(ends["source_density"] == "D", ends[column]),
        "auc_f_vs_gd": roc_auc_score(rank > 0, table[column]),
        "kendall_tau": kendalltau(rank, table[column]).statistic,
    }


def main(argv=None) -> int:
    args = parse_arguments(argv)
    mias = find_mias(args.mias)
    if mias is None:
        return 0
    quiet_tensorflow()  # only now: --help and a missing MIAS answer at once
    args.work.mkdir(parents=True, exist_ok=True)
    stage0 = args.work / "stage0"
    manifest = gray_baselines(run_stage0(mias, stage0), stage0)
    manifest["fold"] = assign_folds(manifest, args.folds, args.seed)
    print(
        f"{len(manifest)} films of {manifest['subject'].nunique()} women, "
        f"levels {manifest['source_density'].value_counts().to_dict()}, {args.folds} folds"
    )
    columns = ["gray_otsu", "gray_otsu_stage0", "gray_stage0_breast"]
    for targets in [] if args.baseline_only else args.targets:
        column = score_column(targets, args.backbone, phantoms=args.phantoms is not None)
        name = column.removeprefix("expected_")
        manifest[column] = np.nan
        manifest[class_column(column)] = None
        for fold in range(args.folds):
            fold_root = args.work / name / f"fold{fold}"
            write_fold_data(manifest, fold, fold_root / "data")
            final = train_fold(args, targets, fold_root)
            held_out = manifest["fold"] == fold
            probabilities = predict(final, manifest[held_out])
            manifest.loc[held_out, column] = probabilities @ np.arange(probabilities.shape[1])
            manifest.loc[held_out, class_column(column)] = np.asarray(CLASSES)[
                probabilities.argmax(axis=1)
            ]
            print(f"{name} fold {fold}: {scores(manifest[held_out], column)}", flush=True)
        columns.append(column)
    # Earlier runs' choices (other --targets, with or without --phantoms) stay in the tables.
    previous = args.work / "predictions.csv"
    if previous.is_file():
        earlier = pd.read_csv(previous).set_index("file")
        for column in earlier.columns:
            if column.startswith("expected_") and column not in columns:
                manifest[column] = manifest["file"].map(earlier[column])
                columns.append(column)
                if class_column(column) in earlier:
                    manifest[class_column(column)] = manifest["file"].map(
                        earlier[class_column(column)]
                    )
    per_fold = [
        {"score": column, "fold": fold, **scores(manifest[manifest["fold"] == fold], column)}
        for column in columns
        for fold in range(args.folds)
    ]
    pd.DataFrame(per_fold).to_csv(args.work / "folds.csv", index=False, float_format="%.4f")
    summary = pd.DataFrame(
        [
            {
                "score": column,
                **scores(manifest, column),
                **class_agreement(manifest, column),
                **{
                    f"{k}_fold_mean": v
                    for k, v in pd.DataFrame(per_fold)
                    .query("score == @column")[["auc_f_vs_d", "kendall_tau"]]
                    .mean()
                    .items()
                },
            }
            for column in columns
        ]
    )
    summary.to_csv(args.work / "summary.csv", index=False, float_format="%.4f")
    manifest.drop(columns=["path"]).to_csv(args.work / "predictions.csv", index=False)
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
