"""Synthetic phantom datasets in the reference's folder layout, with their manifest.

``generate_dataset`` plans the subjects of each split (class and percent
density, fixed by the seed), renders the four views of each subject
(``phantom_model``: the image formation), and writes::

    OUT/TrainingSet/<PROJ>/train/<CLASS>/<subject>_<CLASS>_<PROJ>.png   (and ValidationSet/, TestSet/)
    OUT/DenseMasks/<same tree>     255 = dense tissue
    OUT/manifest.csv               one row per image: file, mask, subject, class, PD, parameters, seed

The manifest is written last and atomically: it is what says a dataset is
complete, and it lists exactly the files ``overwrite=True`` may delete. The
dataset is a deterministic function of the arguments, whatever the number of
worker processes.

By default each subject's PD is drawn inside its class's sub-band of
``PD_SAMPLING_BANDS`` (margins between classes); with ``label_noise`` > 0 the
class is the band of a noisy "reading" of PD, so neighbouring classes overlap
as they do between human readers.

The generator's maths is re-exported here (``make_subject``,
``render_phantom``, ``sample_parameters``, the bands ...), so that one import
of this module serves every caller.
"""

from __future__ import annotations

import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from ..conventions import CLASSES, DENSE_MASKS, MIN_IMAGE_SIZE, image_file_name, split_dir
from ..files import atomic_write, check_writable
from .phantom_model import (
    BIRADS_BANDS,
    GENERATOR_VERSION,
    PD_SAMPLING_BANDS,
    Phantom,
    PhantomParameters,
    make_subject,
    mirror_for_side,
    power_law_noise,
    render_phantom,
    sample_parameters,
)

__all__ = [
    "BIRADS_BANDS",
    "GENERATED_ENTRIES",
    "GENERATOR_VERSION",
    "MANIFEST_NAME",
    "PD_SAMPLING_BANDS",
    "PREVALENCE",
    "Phantom",
    "PhantomParameters",
    "class_counts",
    "delete_files",
    "encode_png",
    "files_to_overwrite",
    "generate_dataset",
    "make_subject",
    "mirror_for_side",
    "plan_split",
    "power_law_noise",
    "render_phantom",
    "sample_parameters",
]

PREVALENCE = {
    "balanced": {"A": 0.25, "B": 0.25, "C": 0.25, "D": 0.25},
    "screening": {"A": 0.10, "B": 0.40, "C": 0.40, "D": 0.10},
}
# Each split has its own random stream (and subject-name prefix), so adding subjects to one
# split changes none of the others.
SPLIT_CODES = {"train": 1, "validation": 2, "test": 3}
SUBJECT_PREFIX = {"train": "tr", "validation": "va", "test": "te"}
MANIFEST_NAME = "manifest.csv"
# What a dataset folder holds: the entries whose presence means "a dataset is here".
GENERATED_ENTRIES = ("TrainingSet", "ValidationSet", "TestSet", DENSE_MASKS, MANIFEST_NAME)


def class_counts(subjects: int, prevalence: str) -> dict[str, int]:
    """Exact class counts for a split (largest-remainder rounding of the prevalence)."""
    shares = PREVALENCE[prevalence]
    raw = {label: subjects * shares[label] for label in CLASSES}
    counts = {label: int(math.floor(value)) for label, value in raw.items()}
    remainder = subjects - sum(counts.values())
    for label in sorted(CLASSES, key=lambda c: (-(raw[c] - counts[c]), CLASSES.index(c)))[
        :remainder
    ]:
        counts[label] += 1
    return counts


def plan_split(
    split: str, subjects: int, seed: int, prevalence: str, label_noise: float
) -> list[dict]:
    """Subjects of one split: id, class and subject-level PD, deterministic for the seed."""
    rng = np.random.default_rng([seed, SPLIT_CODES[split]])
    counts = class_counts(subjects, prevalence)
    labels = [label for label in CLASSES for _ in range(counts[label])]
    labels = [labels[i] for i in rng.permutation(len(labels))]
    plan = []
    for index, label in enumerate(labels):
        if label_noise > 0:
            # A "reader" sees PD + noise and assigns the band of what they see.
            low, high = BIRADS_BANDS[label]
            reading = rng.uniform(max(low, 1.0), min(high, 95.0))
            subject_pd = float(np.clip(reading - rng.normal(0.0, label_noise), 1.0, 95.0))
        else:
            subject_pd = float(rng.uniform(*PD_SAMPLING_BANDS[label]))
        plan.append(
            {
                "split": split,
                "subject": f"{SUBJECT_PREFIX[split]}{index + 1:04d}",
                "label": label,
                "subject_pd": subject_pd,
                "seed": [seed, SPLIT_CODES[split], index],
            }
        )
    return plan


def encode_png(array: np.ndarray) -> bytes:
    """A uint8 (H, W) array as the bytes of a PNG file."""
    ok, buffer = cv2.imencode(".png", array)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buffer.tobytes()


def files_to_overwrite(out_dir: Path, existing: list[str]) -> list[Path]:
    """The files ``--overwrite`` may delete: exactly those the generator's manifest lists.

    Args:
        out_dir: the dataset folder.
        existing: the entries of ``GENERATED_ENTRIES`` present in it.

    Returns:
        The listed images and masks that exist, then the manifest itself (last).

    Raises:
        FileExistsError: without a manifest of the generator, or when the
            dataset trees hold a file the manifest does not list (the
            generator did not make it, so it deletes nothing).
    """

    manifest = out_dir / MANIFEST_NAME
    nothing = "so nothing is deleted; move them away yourself or choose another --out"
    if not manifest.is_file():
        raise FileExistsError(
            f"{out_dir} holds {', '.join(existing)} but no {MANIFEST_NAME} of Make_Phantoms.py: "
            f"they were not generated there (or the manifest was lost), {nothing}"
        )
    try:
        table = pd.read_csv(manifest, usecols=["file", "mask", "generator_version"], dtype=str)
    except (ValueError, pd.errors.ParserError) as error:
        raise FileExistsError(
            f"{manifest} is not a manifest of Make_Phantoms.py ({error}), {nothing}"
        ) from error
    listed = {out_dir / name for name in (*table["file"], *table["mask"])}
    present = files_in(out_dir, existing)
    refuse_unlisted(out_dir, present - listed, "the dataset folders", MANIFEST_NAME, nothing)
    return [*sorted(present & listed), manifest]


def files_in(out_dir: Path, folders) -> set[Path]:
    """Every file below the ``folders`` (names inside ``out_dir``) that exist."""
    return {
        path
        for name in folders
        if (out_dir / name).is_dir()
        for path in (out_dir / name).rglob("*")
        if not path.is_dir()
    }


def refuse_unlisted(out_dir: Path, unlisted: set[Path], where: str, manifest: str, nothing: str):
    """``--overwrite`` deletes only what a manifest lists: any other file there stops it."""
    if unlisted:
        examples = ", ".join(str(path) for path in sorted(unlisted)[:3])
        raise FileExistsError(
            f"{out_dir}: {len(unlisted)} file(s) in {where} are not listed in its {manifest} "
            f"(e.g. {examples}): Make_Phantoms.py did not write them, {nothing}"
        )


def delete_files(out_dir: Path, files: list[Path]) -> None:
    """Delete ``files``, then the folders of ``GENERATED_ENTRIES`` this leaves empty.

    The manifest comes last in ``files``: an interrupted deletion can be
    completed by running again with --overwrite.
    """
    for path in files:
        path.unlink(missing_ok=True)
    for name in GENERATED_ENTRIES:
        top = out_dir / name
        if top.is_dir():
            for folder in sorted(top.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
            if not any(top.iterdir()):
                top.rmdir()


def _write_subject(task: tuple) -> list[dict]:
    """Worker: render the 4 views of one subject, write images and masks, return manifest rows.

    Plain writes: the manifest, written last and atomically, is what says a dataset is complete.
    """
    entry, out_dir, height, width, extra = task
    out_dir = Path(out_dir)
    rows = []
    for phantom in make_subject(entry, height, width):
        p = phantom.parameters
        folder = split_dir(".", entry["split"], p.projection) / entry["label"]
        relative = folder / image_file_name(entry["subject"], entry["label"], p.projection)
        for target, array in (
            (out_dir / relative, phantom.image),
            (out_dir / DENSE_MASKS / relative, phantom.dense_mask.astype(np.uint8) * 255),
        ):
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(encode_png(array))
        row = {
            "file": relative.as_posix(),
            "mask": (Path(DENSE_MASKS) / relative).as_posix(),
            "subject": entry["subject"],
            "projection": p.projection,
            "split": entry["split"],
            "class": entry["label"],
            "percent_density": round(phantom.percent_density, 4),
            "subject_pd": round(entry["subject_pd"], 4),
        }
        row.update(asdict(p))
        del row["label"]
        row.update(extra)
        row["seed_path"] = "-".join(str(s) for s in entry["seed"])
        rows.append(row)
    return rows


def generate_dataset(
    out_dir: str | Path,
    subjects: tuple[int, int, int],
    size: tuple[int, int],
    seed: int,
    prevalence: str = "balanced",
    workers: int = 1,
    label_noise: float = 0.0,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Generate train/validation/test phantoms in the reference layout under ``out_dir``.

    Args:
        out_dir: receives TrainingSet/, ValidationSet/, TestSet/, DenseMasks/ and manifest.csv.
        subjects: subjects per split (train, validation, test); 0 skips a split.
        size: (height, width) of every image.
        seed: the whole dataset is a deterministic function of the arguments.
        prevalence: "balanced" or "screening" (10/40/40/10 % for A/B/C/D).
        workers: processes rendering subjects in parallel (1: in this process).
        label_noise: standard deviation (PD points) of the simulated reader's
            error; 0 keeps every PD inside its class band with margins.
        overwrite: replace a dataset previously generated in out_dir; only the
            files its manifest lists are deleted (see ``files_to_overwrite``).
        progress: show a progress bar.

    Returns:
        The path of the manifest CSV.

    Raises:
        ValueError: a bad argument (before anything is written).
        FileExistsError: out_dir holds a dataset and overwrite is False, or
            holds files the generator cannot prove it wrote.
        UnwritableError: out_dir cannot be written.
    """
    out_dir = Path(out_dir)
    height, width = int(size[0]), int(size[1])
    if min(height, width) < MIN_IMAGE_SIZE:  # the network could not be trained on them
        raise ValueError(
            f"image size {height}x{width} is too small (at least {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE})"
        )
    if prevalence not in PREVALENCE:
        raise ValueError(f"prevalence must be one of {', '.join(PREVALENCE)}")
    if any(n < 0 for n in subjects) or sum(subjects) == 0:
        raise ValueError(f"subjects per split must be >= 0 and not all 0, got {subjects}")
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a whole number >= 0, got {seed}")
    if not math.isfinite(label_noise) or label_noise < 0:
        raise ValueError(f"label_noise must be a finite number >= 0, got {label_noise}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    check_writable(out_dir, "dataset folder")
    existing = [name for name in GENERATED_ENTRIES if (out_dir / name).exists()]
    if existing:
        ours = files_to_overwrite(out_dir, existing)
        if not overwrite:
            raise FileExistsError(
                f"{out_dir} already holds a generated dataset: --overwrite would delete the "
                f"{len(ours) - 1} files listed in its {MANIFEST_NAME} (images and masks), the "
                "manifest itself and the folders this leaves empty; or choose another --out"
            )
        if progress:
            print(
                f"deleting the previous dataset: the {len(ours) - 1} files listed in "
                f"{MANIFEST_NAME} and the manifest itself"
            )
        delete_files(out_dir, ours)
    out_dir.mkdir(parents=True, exist_ok=True)

    extra = {
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "prevalence": prevalence,
        "label_noise": label_noise,
    }
    plan = []
    for split, count in zip(("train", "validation", "test"), subjects, strict=True):
        if count:
            plan += plan_split(split, count, seed, prevalence, label_noise)
    tasks = [(entry, str(out_dir), height, width, extra) for entry in plan]
    iterator = None
    if workers > 1:
        # "spawn": safe even when the caller has imported TensorFlow (threads).
        executor = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        iterator = executor.map(_write_subject, tasks, chunksize=4)
    else:
        executor = None
        iterator = map(_write_subject, tasks)
    if progress:
        iterator = tqdm(iterator, total=len(tasks), unit="subject")
    try:
        rows = [row for subject_rows in iterator for row in subject_rows]
    finally:
        if executor is not None:
            executor.shutdown()
    manifest = out_dir / MANIFEST_NAME
    atomic_write(manifest, lambda path: pd.DataFrame(rows).to_csv(path, index=False))
    return manifest
