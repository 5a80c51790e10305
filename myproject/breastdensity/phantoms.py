"""Synthetic mammography phantoms with ground-truth dense-tissue masks.

Each phantom imitates a mammogram after the reference's preprocessing: 8-bit
gray, background exactly 0, breast cropped at the skin line, chest wall on the
image edge (right edge for right breasts, nipple pointing left; left breasts
mirrored), and for MLO views the pectoral muscle replaced by the mean breast
gray value. Recipe, per image (all lengths relative to the image size):

1. Outline: a super-ellipse against the chest wall (CC), or a tilted one with
   an axillary tail and a pectoral triangle in the upper chest-wall corner (MLO).
2. Dense-tissue mask: power-law noise P(f) ~ 1/f^3 plus a smooth central prior,
   thresholded so that exactly the target percent density (PD) of the breast
   area (pectoral excluded) is dense; a thin subcutaneous fat ring stays fatty.
3. Intensities: fat as smooth mid-gray with anatomical power-law texture
   (beta ~ 3, the published range for mammograms is 1.5-3.5); dense tissue
   brighter, textured, with soft (blurred) edges; thickness falloff near the
   skin line; a thin skin line, the nipple, faint curvilinear structures
   pointing to the nipple; mild noise; random global brightness and contrast so
   that no single global statistic reveals the class.

Labels follow the BI-RADS 4th-edition bands of PD: A < 25 %, B 25-50 %,
C 50-75 %, D > 75 %. By default PD is drawn inside each band with margins; with
``label_noise`` > 0 the class is the band of a noisy "reading" of PD, so
neighbouring classes overlap as they do between human readers.
"""

from __future__ import annotations

import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from tqdm import tqdm

from .conventions import (
    CLASSES,
    DENSE_MASKS,
    MIN_IMAGE_SIZE,
    PROJECTIONS,
    image_file_name,
    split_dir,
)
from .files import atomic_write, check_writable
from .preprocessing import read_mask

GENERATOR_VERSION = "1"
BIRADS_BANDS = {"A": (0.0, 25.0), "B": (25.0, 50.0), "C": (50.0, 75.0), "D": (75.0, 100.0)}
# PD is sampled inside these sub-bands by default (margins between classes).
PD_SAMPLING_BANDS = {"A": (2.0, 22.0), "B": (27.0, 48.0), "C": (53.0, 73.0), "D": (78.0, 92.0)}
PREVALENCE = {
    "balanced": {"A": 0.25, "B": 0.25, "C": 0.25, "D": 0.25},
    "screening": {"A": 0.10, "B": 0.40, "C": 0.40, "D": 0.10},
}
SPLIT_CODES = {"train": 1, "validation": 2, "test": 3}
SUBJECT_PREFIX = {"train": "tr", "validation": "va", "test": "te"}


@dataclass
class PhantomParameters:
    """Everything that defines one phantom image (also written to the manifest)."""

    projection: str
    label: str
    target_pd: float  # percent
    height: int
    width: int
    beta_mask: float  # spectral exponent of the dense-tissue pattern
    beta_texture: float  # spectral exponent of the anatomical texture
    fat_level: float  # gray level of fat (before global gain)
    dense_contrast: float  # gray levels added by dense tissue
    gain: float  # global contrast factor
    offset: float  # global brightness offset
    noise_sigma: float
    outline_seed: int
    texture_seed: int


def power_law_noise(shape: tuple[int, int], beta: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise with power spectrum P(f) ~ 1/f^beta, zero mean, unit std.

    White noise filtered in Fourier space by the amplitude |f|^(-beta/2).
    """
    height, width = shape
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    frequency = np.sqrt(fx * fx + fy * fy)
    frequency[0, 0] = 1.0
    amplitude = frequency ** (-beta / 2.0)
    amplitude[0, 0] = 0.0
    spectrum = np.fft.rfft2(rng.standard_normal(shape)) * amplitude
    field = np.fft.irfft2(spectrum, s=shape)
    field -= field.mean()
    return (field / (field.std() + 1e-12)).astype(np.float32)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _outline(projection: str, height: int, width: int, rng: np.random.Generator):
    """Breast and pectoral masks for a right breast (chest wall on the right edge).

    Returns (breast, pectoral, nipple_xy); pectoral is inside breast.
    Coordinates: u = distance from the chest wall / width, v = row / height.
    """
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    u = (width - 1 - cols) / width
    v = rows / height
    reach = rng.uniform(0.90, 0.97)  # nipple distance from the chest wall
    exponent = rng.uniform(1.7, 2.4)
    pectoral = np.zeros((height, width), bool)
    if projection.startswith("CC"):
        centre = rng.uniform(0.46, 0.54)
        half_top, half_bottom = rng.uniform(0.40, 0.48), rng.uniform(0.40, 0.48)
        half = np.where(v < centre, half_top, half_bottom)
        breast = (u / reach) ** exponent + (np.abs(v - centre) / half) ** 2 <= 1.0
        nipple_v = centre
    else:
        # MLO: the skin line runs from the axilla on the top edge, out to the
        # nipple (lower than the middle: the breast is pulled down and out) and
        # back to the chest wall at the inframammary fold near the bottom.
        top_reach = rng.uniform(0.38, 0.55)  # axillary tail width at the top edge
        nipple_v = rng.uniform(0.52, 0.64)
        fold_v = rng.uniform(0.86, 0.98)
        upper = top_reach + (reach - top_reach) * np.sin(
            0.5 * np.pi * np.clip(v / nipple_v, 0, 1)
        ) ** rng.uniform(0.7, 1.1)
        lower = reach * np.clip(
            np.cos(0.5 * np.pi * np.clip((v - nipple_v) / (fold_v - nipple_v), 0, 1)), 0, 1
        ) ** (1.0 / exponent)
        boundary = np.where(v <= nipple_v, upper, lower)
        breast = (u <= boundary) & (v <= fold_v)
        breast = cv2.GaussianBlur(breast.astype(np.float32), (0, 0), 0.01 * width) > 0.5
        # Pectoral muscle: a triangle in the upper chest-wall corner, slightly convex.
        pect_width = rng.uniform(0.45, 0.8) * top_reach
        pect_height = rng.uniform(0.40, 0.70)
        curvature = rng.uniform(0.8, 1.0)
        pectoral = breast & ((u / pect_width) ** curvature + (v / pect_height) ** curvature <= 1.0)
    nipple_xy = (width - 1 - reach * width, nipple_v * height)
    # Nipple: a small bump on the outline.
    radius = max(1.0, 0.015 * width)
    nipple = (cols - nipple_xy[0]) ** 2 + (rows - nipple_xy[1]) ** 2 <= radius**2
    breast |= nipple
    # keep the largest connected piece (the nipple disc may not quite touch the outline)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(breast.astype(np.uint8), 4)
    if count > 2:
        largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        breast = labels == largest
    return breast, pectoral & breast, nipple_xy


def _dense_mask(
    breast: np.ndarray,
    pectoral: np.ndarray,
    nipple_xy: tuple[float, float],
    target_pd: float,
    beta: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Binary dense mask covering exactly target_pd % of the non-pectoral breast."""
    height, width = breast.shape
    tissue = breast & ~pectoral
    area = int(tissue.sum())
    wanted = int(round(target_pd / 100.0 * area))
    # Subcutaneous fat: a ring below the skin stays fatty; thinner for dense breasts.
    distance = cv2.distanceTransform(breast.astype(np.uint8), cv2.DIST_L2, 3)
    ring = max(1.0, (1.0 - target_pd / 100.0) * 0.05 * width)
    eligible = tissue & (distance > ring)
    if eligible.sum() < wanted:  # very dense small phantoms: relax the ring
        eligible = tissue & (distance > 1.0)
    if eligible.sum() < wanted:
        eligible = tissue
    # Smooth prior centred behind the nipple, between nipple and chest wall.
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    chest_x = width - 1.0
    centre_x = nipple_xy[0] + rng.uniform(0.35, 0.55) * (chest_x - nipple_xy[0])
    centre_y = nipple_xy[1] + rng.uniform(-0.08, 0.08) * height
    spread_x, spread_y = rng.uniform(0.30, 0.45) * width, rng.uniform(0.25, 0.40) * height
    prior = -(((cols - centre_x) / spread_x) ** 2 + ((rows - centre_y) / spread_y) ** 2)
    score = power_law_noise((height, width), beta, rng) + rng.uniform(1.0, 1.8) * prior
    candidates = np.flatnonzero(eligible)
    mask = np.zeros(height * width, bool)
    if wanted > 0:
        top = np.argpartition(-score.ravel()[candidates], wanted - 1)[:wanted]
        mask[candidates[top]] = True
    return mask.reshape(height, width)


def _curvilinear(breast: np.ndarray, nipple_xy, rng: np.random.Generator) -> np.ndarray:
    """Faint ligaments and vessels: thin curves from the chest-wall side toward the nipple."""
    height, width = breast.shape
    canvas = np.zeros((height, width), np.float32)
    ys, xs = np.nonzero(breast)
    if len(xs) == 0:
        return canvas
    nipple = np.array(nipple_xy, np.float32)
    count = rng.integers(12, 25)
    for _ in range(count):
        pick = rng.integers(len(xs))
        start = np.array([xs[pick], ys[pick]], np.float32)
        direction = nipple - start
        length = np.linalg.norm(direction) + 1e-6
        normal = np.array([-direction[1], direction[0]]) / length
        stop = rng.uniform(0.3, 0.9)
        bend = rng.uniform(-0.08, 0.08) * length
        s = np.linspace(0.0, stop, 24)[:, None]
        points = start + s * direction + np.sin(np.pi * s) * bend * normal
        cv2.polylines(
            canvas,
            [np.round(points * 16).astype(np.int32)],
            False,
            float(rng.uniform(0.4, 1.0)),
            thickness=1,
            lineType=cv2.LINE_AA,
            shift=4,
        )
    return cv2.GaussianBlur(canvas, (0, 0), max(0.5, 0.0015 * width))


def sample_parameters(
    projection: str,
    label: str,
    subject_pd: float,
    height: int,
    width: int,
    rng: np.random.Generator,
) -> PhantomParameters:
    """Per-image parameters; the subject's PD is jittered a little per view."""
    low, high = PD_SAMPLING_BANDS[label]
    target_pd = float(np.clip(subject_pd + rng.uniform(-2.0, 2.0), low, high))
    if not low <= subject_pd <= high:  # noisy labels: the subject PD may lie outside
        target_pd = float(np.clip(subject_pd + rng.uniform(-2.0, 2.0), 0.5, 97.0))
    base_beta = 3.17 if projection.startswith("CC") else 3.30  # published means
    return PhantomParameters(
        projection=projection,
        label=label,
        target_pd=round(target_pd, 3),
        height=height,
        width=width,
        beta_mask=3.0,
        beta_texture=round(float(np.clip(rng.normal(base_beta, 0.23), 2.5, 3.6)), 3),
        fat_level=round(float(rng.uniform(50.0, 110.0)), 3),
        dense_contrast=round(float(rng.uniform(40.0, 90.0)), 3),
        gain=round(float(rng.uniform(0.8, 1.15)), 3),
        offset=round(float(rng.uniform(-15.0, 15.0)), 3),
        noise_sigma=round(float(rng.uniform(1.0, 3.0)), 3),
        outline_seed=int(rng.integers(2**31)),
        texture_seed=int(rng.integers(2**31)),
    )


@dataclass
class Phantom:
    image: np.ndarray  # uint8 (H, W), background exactly 0
    dense_mask: np.ndarray  # bool (H, W)
    breast_mask: np.ndarray  # bool (H, W), pectoral excluded
    pectoral_mask: np.ndarray  # bool (H, W)
    percent_density: float  # measured on the mask, percent
    parameters: PhantomParameters


def render_phantom(parameters: PhantomParameters) -> Phantom:
    """Render one phantom image and its masks from its parameters (deterministic)."""
    p = parameters
    height, width = p.height, p.width
    outline_rng = np.random.default_rng(p.outline_seed)
    texture_rng = np.random.default_rng(p.texture_seed)
    breast, pectoral, nipple_xy = _outline(p.projection, height, width, outline_rng)
    dense = _dense_mask(breast, pectoral, nipple_xy, p.target_pd, p.beta_mask, texture_rng)

    # Intensities (gray levels before the global gain/offset).
    distance = cv2.distanceTransform(breast.astype(np.uint8), cv2.DIST_L2, 3) / width
    thickness = 0.55 + 0.45 * _smoothstep(distance / texture_rng.uniform(0.04, 0.08))
    fat = p.fat_level * (1.0 + 0.06 * power_law_noise((height, width), 3.0, texture_rng))
    softness = max(0.6, 0.004 * width)
    dense_weight = cv2.GaussianBlur(dense.astype(np.float32), (0, 0), softness)
    # Dense tissue is not uniform: coarse anatomical texture plus finer grain.
    coarse = power_law_noise((height, width), p.beta_texture, texture_rng)
    fine = power_law_noise((height, width), 2.0, texture_rng)
    texture = np.clip(0.8 * coarse + 0.6 * fine, -3.0, 3.0)
    tissue = fat + p.dense_contrast * dense_weight * (1.0 + 0.22 * texture)
    tissue += 0.15 * p.dense_contrast * _curvilinear(breast, nipple_xy, texture_rng)
    image = thickness * tissue
    skin = breast & ~cv2.erode(breast.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    image[skin] += 0.25 * p.fat_level
    image = p.gain * image + p.offset
    image += texture_rng.normal(0.0, p.noise_sigma, size=image.shape)
    # Soft shoulder above 200 (like a display LUT) instead of hard clipping,
    # so the brightest dense tissue keeps its texture.
    image = np.where(image > 200.0, 200.0 + 55.0 * np.tanh((image - 200.0) / 55.0), image)
    image = np.clip(np.round(image), 1, 255).astype(np.uint8)  # breast never 0
    tissue_region = breast & ~pectoral
    if pectoral.any():
        # As the reference preprocessing did: pectoral muscle -> mean breast gray.
        image[pectoral] = np.uint8(round(float(image[tissue_region].mean())))
    image[~breast] = 0
    area = int(tissue_region.sum())
    percent_density = 100.0 * int(dense.sum()) / max(area, 1)
    return Phantom(image, dense, tissue_region, pectoral, percent_density, p)


def mirror_for_side(array: np.ndarray, projection: str) -> np.ndarray:
    """Right breasts are rendered with the chest wall on the right; mirror left ones."""
    return np.ascontiguousarray(array[:, ::-1]) if projection.endswith("_L") else array


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


def make_subject(entry: dict, height: int, width: int) -> list[Phantom]:
    """The four projections of one planned subject."""
    phantoms = []
    for projection_index, projection in enumerate(PROJECTIONS):
        rng = np.random.default_rng([*entry["seed"], projection_index])
        parameters = sample_parameters(
            projection, entry["label"], entry["subject_pd"], height, width, rng
        )
        phantom = render_phantom(parameters)
        for name in ("image", "dense_mask", "breast_mask", "pectoral_mask"):
            setattr(phantom, name, mirror_for_side(getattr(phantom, name), projection))
        phantoms.append(phantom)
    return phantoms


def encode_png(array: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(".png", array)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buffer.tobytes()


def parameters_dict(parameters: PhantomParameters) -> dict:
    return asdict(parameters)


# ----------------------------------------------------------------------------
# Writing a dataset in the reference layout
# ----------------------------------------------------------------------------

GENERATED_ENTRIES = ("TrainingSet", "ValidationSet", "TestSet", DENSE_MASKS, "manifest.csv")
MANIFEST_NAME = "manifest.csv"


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
    present = {
        path
        for name in existing
        if (out_dir / name).is_dir()
        for path in (out_dir / name).rglob("*")
        if not path.is_dir()
    }
    foreign = sorted(present - listed)
    if foreign:
        examples = ", ".join(str(path) for path in foreign[:3])
        raise FileExistsError(
            f"{out_dir}: {len(foreign)} file(s) in the dataset folders are not listed in its "
            f"{MANIFEST_NAME} (e.g. {examples}): Make_Phantoms.py did not write them, {nothing}"
        )
    return [*sorted(present & listed), manifest]


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
        row.update(parameters_dict(p))
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
            mask = read_mask(data_dir / row["mask"])
            axis.imshow(image, cmap="gray", vmin=0, vmax=255)
            axis.contour(mask, levels=[0.5], colors="red", linewidths=0.6)
            axis.set_title(f"{label} {projection}  PD {row['percent_density']:.0f}%", fontsize=9)
    figure.suptitle(f"Synthetic phantoms ({split} split); red: dense-tissue mask", fontsize=11)
    figure.tight_layout()
    Path(figure_path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(figure_path, dpi=110)
    plt.close(figure)
    return Path(figure_path)
