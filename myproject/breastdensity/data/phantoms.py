"""Synthetic mammography phantoms with ground-truth dense-tissue masks.

Each phantom imitates a mammogram after the reference's preprocessing: 8-bit
gray, background exactly 0, breast cropped at the skin line, chest wall on the
image edge (right edge for right breasts, nipple pointing left; left breasts
mirrored), and for MLO views the pectoral muscle replaced by the mean breast
gray value. Recipe, per image (lengths relative to the image width; version 3):

1. Outline: a super-ellipse against the chest wall (CC), or a tilted one with
   an axillary tail and a pectoral triangle in the upper chest-wall corner (MLO).
2. Compressed breast: full thickness inside, rounded roll-off under the skin.
3. Tissue built from structures: a glandular score (smooth prior behind the
   nipple + anisotropic power-law texture, beta ~ 3.2 CC / 3.3 MLO, + fibrous
   texture converging on the nipple) inside a subcutaneous and retromammary
   fat envelope; Cooper's ligaments as thin septa bounding fat lobules
   (warped Voronoi cells); a fine reticular mesh of trabeculae through the
   fat (zero crossings of a random field; version 3); vessels. Textures are
   made in a frame ``aspect``
   times taller and squeezed, as stage 0's crop and the square network input
   squeeze a real breast.
4. Dense mask: exactly the target percent density (PD) of the breast area
   (pectoral excluded) where the glandular score is highest; the image uses
   the soft glandular fraction, so the mask is exact ground truth of the
   bright tissue without being a hard-edged cloud.
5. Projection and display: log-attenuation signal (fat 1, gland
   1 + contrast), peripheral equalisation (strong on digital images, so the
   fat's texture reaches the skin), a VOI window below fat and above gland
   (version 3: fat textured, dense tissue seldom burnt out), display curve
   (linear, sigmoid, log), gamma, local contrast enhancement with soft limits
   (half of the digital images heavily); detector resolution,
   blur and quantum-like noise; 30 % scanned-film look (characteristic curve,
   grain, softer). These vary per image (domain randomisation) so that no
   single system's look or global statistic gives the class away.

How close the result is to real mammograms is measured by
``tools/realism.py`` (README, "How real do the phantoms look?").

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

GENERATOR_VERSION = "3"
BIRADS_BANDS = {"A": (0.0, 25.0), "B": (25.0, 50.0), "C": (50.0, 75.0), "D": (75.0, 100.0)}
# PD is sampled inside these sub-bands by default (margins between classes).
PD_SAMPLING_BANDS = {"A": (2.0, 22.0), "B": (27.0, 48.0), "C": (53.0, 73.0), "D": (78.0, 92.0)}
PREVALENCE = {
    "balanced": {"A": 0.25, "B": 0.25, "C": 0.25, "D": 0.25},
    "screening": {"A": 0.10, "B": 0.40, "C": 0.40, "D": 0.10},
}
SPLIT_CODES = {"train": 1, "validation": 2, "test": 3}
SUBJECT_PREFIX = {"train": "tr", "validation": "va", "test": "te"}
# Display curves of "for presentation" images (vendor-like); film: a scanned screen-film image.
DISPLAY_CURVES = ("linear", "sigmoid", "log")


@dataclass
class PhantomParameters:
    """Everything that defines one phantom image (also written to the manifest).

    Lengths are fractions of the image width; gray levels are on the 0-1 display scale.
    """

    projection: str
    label: str
    target_pd: float  # percent
    height: int
    width: int
    aspect: float  # physical height / width of the breast the frame squeezes (texture anisotropy)
    beta_texture: float  # spectral exponent of the anatomical texture
    fibre_anisotropy: float  # how much longer fibrous structures are toward the nipple than across
    edge_width: float  # compressed-thickness roll-off under the skin
    fat_envelope: float  # subcutaneous fat layer (no glandular tissue)
    gland_contrast: float  # extra log-attenuation of glandular over fatty tissue
    ligaments: float  # Cooper's ligaments, in units of gland_contrast
    fine_texture: float  # fine trabecular texture everywhere, in units of gland_contrast
    ligament_width: float  # half width, fraction of the image width
    trabeculae: float  # fine reticular strands through the fat, in units of gland_contrast
    trabecular_beta: float  # spectral exponent of their field: lower, a finer mesh
    vessels: int
    equalisation: float  # peripheral equalisation (0: none, 1: thickness roll-off removed)
    display_curve: str  # one of DISPLAY_CURVES
    window_low: float  # VOI window on the log-signal, fat at full thickness = 1
    window_high: float
    gamma: float
    sharpen: float  # vendor-like local contrast enhancement (unsharp mask gain)
    sharpen_radius: float  # its Gaussian's sigma, fraction of the image width
    output_low: float  # display gray of window_low and window_high
    output_high: float
    blur_sigma: float  # pixels
    resolution: float  # detector pixel / image pixel (>= 1: coarser detector, then upsampled)
    noise_sigma: float  # display gray, 0-1 scale
    film: bool  # scanned-film look: characteristic curve, grain, softer
    outline_seed: int
    texture_seed: int


def power_law_noise(
    shape: tuple[int, int], beta: float, rng: np.random.Generator, aspect: float = 1.0
) -> np.ndarray:
    """Gaussian noise with power spectrum P(f) ~ 1/f^beta, zero mean, unit std.

    White noise filtered in Fourier space by the amplitude |f|^(-beta/2). With
    ``aspect`` > 1 the field is isotropic in a frame ``aspect`` times taller
    than the image, then squeezed into it (as stage 0's crop and the network's
    square input squeeze a real breast): structures look flattened.
    """
    height, width = shape
    fy = np.fft.fftfreq(height)[:, None] / aspect
    fx = np.fft.rfftfreq(width)[None, :]
    frequency = np.sqrt(fx * fx + fy * fy)
    frequency[0, 0] = 1.0
    amplitude = frequency ** (-beta / 2.0)
    amplitude[0, 0] = 0.0
    spectrum = np.fft.rfft2(rng.standard_normal(shape)) * amplitude
    field = np.fft.irfft2(spectrum, s=shape)
    field -= field.mean()
    return (field / (field.std() + 1e-12)).astype(np.float32)


def smooth_noise(shape: tuple[int, int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """White noise blurred by a Gaussian of ``sigma`` pixels, unit std.

    Made at a lower resolution and upsampled: a wide blur of a full-size image
    would dominate the generator's time.
    """
    height, width = shape
    factor = max(1, int(sigma // 3))
    small = rng.standard_normal((height // factor + 2, width // factor + 2)).astype(np.float32)
    small = cv2.GaussianBlur(small, (0, 0), sigma / factor)
    field = cv2.resize(small, (width + 2 * factor, height + 2 * factor))[:height, :width]
    field -= field.mean()
    return field / (field.std() + 1e-12)


def radial_texture(
    shape: tuple[int, int],
    nipple_xy: tuple[float, float],
    beta: float,
    anisotropy: float,
    aspect: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Fibrous power-law texture whose structures converge on the nipple (unit std).

    Power-law noise is made on a polar grid (radius x angle around the nipple),
    ``anisotropy`` times longer along the radius than across it, and mapped
    back to the image: ducts and trabeculae fan out from the nipple.
    """
    height, width = shape
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    dx, dy = cols - nipple_xy[0], (rows - nipple_xy[1]) * aspect
    radius = np.sqrt(dx * dx + dy * dy)
    angle = np.arctan2(dy, dx)
    radii, angles = 192, 768
    fr = np.fft.fftfreq(radii)[:, None] * anisotropy
    fa = np.fft.rfftfreq(angles)[None, :]
    frequency = np.sqrt(fr * fr + fa * fa)
    frequency[0, 0] = 1.0
    amplitude = frequency ** (-beta / 2.0)
    amplitude[0, 0] = 0.0
    polar = np.fft.irfft2(
        np.fft.rfft2(rng.standard_normal((radii, angles))) * amplitude, s=(radii, angles)
    )
    polar = polar.astype(np.float32)
    # Smooth domain warping bends the straight rays into curved strands.
    warp = 0.015 * angles * smooth_noise((height, width), 0.15 * width, rng)
    map_x = ((angle + np.pi) / (2 * np.pi) * angles + warp).astype(np.float32)
    map_y = (radius / (radius.max() + 1e-6) * (radii - 1)).astype(np.float32)
    field = cv2.remap(polar, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)
    field -= field.mean()
    return field / (field.std() + 1e-12)


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
        breast = cv2.GaussianBlur(breast.astype(np.float32), (0, 0), 0.025 * width) > 0.5
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


def _glandular_score(
    breast: np.ndarray,
    nipple_xy: tuple[float, float],
    fibres: np.ndarray,
    p: PhantomParameters,
    rng: np.random.Generator,
) -> np.ndarray:
    """Where glandular tissue is likeliest: a smooth prior behind the nipple plus structure.

    The structure is anatomical texture (isotropic power law) and the fibrous
    texture converging on the nipple, so that the densest tissue is elongated
    toward the nipple and patchy, as the fibroglandular tree is.
    """
    height, width = breast.shape
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    chest_x = width - 1.0
    centre_x = nipple_xy[0] + rng.uniform(0.30, 0.50) * (chest_x - nipple_xy[0])
    centre_y = nipple_xy[1] + rng.uniform(-0.08, 0.08) * height
    spread_x, spread_y = rng.uniform(0.30, 0.45) * width, rng.uniform(0.25, 0.40) * height
    prior = -(((cols - centre_x) / spread_x) ** 2 + ((rows - centre_y) / spread_y) ** 2)
    texture = power_law_noise((height, width), p.beta_texture, rng, p.aspect)
    return rng.uniform(1.0, 1.8) * prior + 0.8 * texture + 0.4 * fibres


def _fat_envelope(breast: np.ndarray, pectoral: np.ndarray, p: PhantomParameters) -> np.ndarray:
    """Where glandular tissue may be: inside the subcutaneous and retromammary fat layers."""
    width = breast.shape[1]
    distance = cv2.distanceTransform(np.pad(breast, 1).astype(np.uint8), cv2.DIST_L2, 3)
    distance = distance[1:-1, 1:-1]
    # Subcutaneous fat: thinner in dense breasts.
    ring = max(1.0, (1.0 - 0.6 * p.target_pd / 100.0) * p.fat_envelope * width)
    retromammary = int(round(0.5 * ring))
    eligible = breast & ~pectoral & (distance > ring)
    if retromammary:
        eligible[:, width - retromammary :] = False  # fat in front of the chest wall
    return eligible


def dense_mask_from_score(
    score: np.ndarray, tissue: np.ndarray, eligible: np.ndarray, target_pd: float
) -> np.ndarray:
    """Binary mask of the highest-score pixels covering exactly target_pd % of ``tissue``.

    Only ``eligible`` pixels may be dense; if too few are (very dense, small
    images) the whole tissue is eligible.
    """
    wanted = int(round(target_pd / 100.0 * int(tissue.sum())))
    if eligible.sum() < wanted:
        eligible = tissue
    candidates = np.flatnonzero(eligible)
    mask = np.zeros(score.size, bool)
    if wanted > 0:
        top = np.argpartition(-score.ravel()[candidates], wanted - 1)[:wanted]
        mask[candidates[top]] = True
    return mask.reshape(score.shape)


def _ligaments(shape, p: PhantomParameters, rng: np.random.Generator) -> np.ndarray:
    """Cooper's ligaments: thin curvilinear septa bounding fat lobules (0-1).

    The lobules are the cells of a Voronoi partition (random centres), made in
    the physical frame (``aspect`` times taller, then squeezed like the image)
    and bent by a smooth random warp; the septa are the cell borders.
    """
    height, width = shape
    tall = int(round(height * p.aspect))
    centres = np.ones((tall, width), np.uint8)
    count = int(rng.uniform(80, 350) * p.aspect)
    centres[rng.integers(0, tall, count), rng.integers(0, width, count)] = 0
    _, labels = cv2.distanceTransformWithLabels(centres, cv2.DIST_L2, 3)
    labels = cv2.resize(labels.astype(np.float32), (width, height), interpolation=cv2.INTER_NEAREST)
    warp_x, warp_y = (smooth_noise(shape, 0.05 * width, rng) for _ in range(2))
    amplitude = 0.03 * width
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    labels = cv2.remap(
        labels,
        cols + amplitude * warp_x,
        rows + amplitude * warp_y,
        cv2.INTER_NEAREST,
        borderMode=cv2.BORDER_REFLECT,
    )
    borders = np.zeros(shape, np.float32)
    borders[:, 1:] += labels[:, 1:] != labels[:, :-1]
    borders[1:, :] += labels[1:, :] != labels[:-1, :]
    sigma = max(0.5, p.ligament_width * width)
    lines = cv2.GaussianBlur(np.minimum(borders, 1.0), (0, 0), sigma)
    # Septa fade in and out: a smooth random visibility, so the mesh is not a regular net.
    visibility = np.clip(0.4 + 0.6 * power_law_noise(shape, 3.5, rng, p.aspect), 0.0, 1.0)
    return np.clip(lines * np.sqrt(2 * np.pi) * sigma, 0.0, 1.0) * visibility


def _trabeculae(fibres: np.ndarray, p: PhantomParameters, rng: np.random.Generator) -> np.ndarray:
    """Fine reticular strands (0-1): the zero crossings of a smooth random field.

    Zero crossings of power-law noise form a mesh of closed, curving lines, as the
    trabeculae and septa that run through the fat of a real mammogram do; mixing
    in the fibrous texture orients part of the mesh toward the nipple.
    """
    field = power_law_noise(fibres.shape, p.trabecular_beta, rng, p.aspect) + 0.2 * fibres
    field /= float(field.std() + 1e-6)
    # Line width follows the local gradient, so the strands stay thin everywhere.
    gy, gx = np.gradient(field)
    slope = np.sqrt(gx * gx + gy * gy) + 1e-6
    width = 0.008 * fibres.shape[1]
    lines = np.exp(-((field / (slope * width)) ** 2))
    visibility = np.clip(0.5 + 0.5 * power_law_noise(fibres.shape, 3.5, rng, p.aspect), 0.0, 1.0)
    return (lines * visibility).astype(np.float32)


def _vessels(breast: np.ndarray, nipple_xy, p: PhantomParameters, rng) -> np.ndarray:
    """A few meandering vessels from the chest wall toward the nipple (0-1)."""
    height, width = breast.shape
    canvas = np.zeros((height, width), np.float32)
    ys = np.flatnonzero(breast[:, -1])
    if len(ys) == 0:
        return canvas
    for _ in range(p.vessels):
        start = np.array([width - 1.0, float(rng.choice(ys))], np.float32)
        target = np.array(nipple_xy, np.float32) + rng.normal(0, 0.15, 2) * [width, height]
        s = np.linspace(0.0, rng.uniform(0.5, 0.95), 40)[:, None]
        direction = target - start
        normal = np.array([-direction[1], direction[0]]) / (np.linalg.norm(direction) + 1e-6)
        wiggle = sum(
            rng.uniform(-0.012, 0.012) * width * np.sin(np.pi * k * s + rng.uniform(0, 6.3))
            for k in (1, 3, 7)
        )
        points = start + s * direction + wiggle * normal
        thickness = max(1, int(round(rng.uniform(0.002, 0.004) * width)))
        cv2.polylines(
            canvas,
            [np.round(points * 16).astype(np.int32)],
            False,
            float(rng.uniform(0.5, 1.0)),
            thickness=thickness,
            lineType=cv2.LINE_AA,
            shift=4,
        )
    return cv2.GaussianBlur(canvas, (0, 0), max(0.5, 0.002 * width))


def sample_parameters(
    projection: str,
    label: str,
    subject_pd: float,
    height: int,
    width: int,
    rng: np.random.Generator,
) -> PhantomParameters:
    """Per-image parameters; the subject's PD is jittered a little per view.

    Anatomy and acquisition are drawn wide on purpose (domain randomisation):
    display curve, window, gamma, blur, resolution, noise and a scanned-film
    look vary so that a model cannot key on one vendor's processing.
    """
    low, high = PD_SAMPLING_BANDS[label]
    target_pd = float(np.clip(subject_pd + rng.uniform(-2.0, 2.0), low, high))
    if not low <= subject_pd <= high:  # noisy labels: the subject PD may lie outside
        target_pd = float(np.clip(subject_pd + rng.uniform(-2.0, 2.0), 0.5, 97.0))
    base_beta = 3.17 if projection.startswith("CC") else 3.30  # published means
    # Scanned film is softer (film blur, scanner resolution) than a digital detector.
    film = bool(rng.random() < 0.3)
    blur, resolution = ((0.8, 1.8), (1.2, 2.2)) if film else ((0.3, 1.0), (1.0, 1.5))
    scale = width / 520.0  # blur is specified for the default 650 x 520 images
    # Digital processing equalises the thin periphery strongly, so structure reaches the
    # skin; film does not (its periphery is often burnt out).
    equalisation = rng.uniform(0.0, 0.6) if film else rng.uniform(0.6, 1.0)
    window_low = rng.uniform(0.55, 0.92)  # below fat: the fat's texture stays visible
    strong = bool(rng.random() < 0.5)  # some vendors enhance local contrast heavily
    gland_contrast = rng.uniform(0.35, 1.0)
    # Above glandular tissue (1 + gland_contrast): dense tissue is bright, seldom burnt out.
    window_high = 1.0 + gland_contrast * rng.uniform(1.1, 1.7)

    def uniform(a: float, b: float) -> float:
        return round(float(rng.uniform(a, b)), 3)

    return PhantomParameters(
        projection=projection,
        label=label,
        target_pd=round(target_pd, 3),
        height=height,
        width=width,
        aspect=uniform(1.2, 3.2),
        beta_texture=round(float(np.clip(rng.normal(base_beta, 0.23), 2.5, 3.6)), 3),
        fibre_anisotropy=uniform(2.0, 8.0),
        edge_width=uniform(0.08, 0.20),
        fat_envelope=uniform(0.03, 0.08),
        gland_contrast=round(float(gland_contrast), 3),
        ligaments=uniform(0.05, 0.25),
        fine_texture=uniform(0.0, 0.25),
        ligament_width=round(float(rng.uniform(0.0015, 0.0035)), 5),
        trabeculae=uniform(0.2, 0.7),
        trabecular_beta=uniform(2.3, 3.2),
        vessels=int(rng.integers(2, 7)),
        equalisation=round(float(equalisation), 3),
        display_curve=str(rng.choice(DISPLAY_CURVES)),
        window_low=round(float(window_low), 3),
        window_high=round(float(window_high), 3),
        gamma=uniform(0.8, 2.6),
        sharpen=0.0 if film else uniform(*(2.0, 4.0) if strong else (0.0, 2.0)),
        sharpen_radius=round(float(np.exp(rng.uniform(np.log(0.01), np.log(0.03)))), 4),
        output_low=uniform(0.07, 0.25),
        output_high=uniform(0.80, 1.0),
        blur_sigma=round(max(0.3, uniform(*blur) * scale), 3),
        resolution=uniform(*resolution),
        noise_sigma=uniform(0.004, 0.02),
        film=film,
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


def display(signal: np.ndarray, p: PhantomParameters, rng: np.random.Generator) -> np.ndarray:
    """Log-signal -> 0-1 display gray: VOI window, display curve, gamma, output range.

    The log-signal is 1 for fat at full thickness and 1 + gland_contrast for
    glandular tissue, so the window keeps density visible in the brightness (as
    real processing does, which is why a mean-gray baseline works on real images).
    """
    x = np.clip((signal - p.window_low) / (p.window_high - p.window_low), 0.0, 1.0)
    if p.display_curve == "sigmoid":
        k = 6.0
        x = (1 / (1 + np.exp(-k * (x - 0.5))) - 1 / (1 + np.exp(k / 2))) / (
            1 / (1 + np.exp(-k / 2)) - 1 / (1 + np.exp(k / 2))
        )
    elif p.display_curve == "log":
        x = np.log1p(8.0 * x) / np.log(9.0)
    if p.film:
        # Screen-film characteristic curve: toe and shoulder, then film grain.
        x = 1 / (1 + np.exp(-5.0 * (x - 0.5)))
        x = (x - x.min()) / (x.max() - x.min() + 1e-6)
    x = x**p.gamma
    return p.output_low + (p.output_high - p.output_low) * x


def render_phantom(parameters: PhantomParameters) -> Phantom:
    """Render one phantom image and its masks from its parameters (deterministic).

    Image formation, as in a mammography system: compressed-breast thickness ->
    tissue (fat, fibroglandular tissue in a fat envelope, Cooper's ligaments,
    vessels) -> log-attenuation signal -> peripheral equalisation -> display
    curve -> detector blur, resolution and noise. The dense mask is the
    ``target_pd`` % of the breast where glandular tissue is likeliest: exact
    ground truth of the tissue that makes the image bright.
    """
    p = parameters
    height, width = p.height, p.width
    outline_rng = np.random.default_rng(p.outline_seed)
    texture_rng = np.random.default_rng(p.texture_seed)
    breast, pectoral, nipple_xy = _outline(p.projection, height, width, outline_rng)
    tissue_region = breast & ~pectoral

    # Compressed breast: full thickness inside, a rounded roll-off under the skin.
    distance = cv2.distanceTransform(np.pad(breast, 1).astype(np.uint8), cv2.DIST_L2, 3)
    distance = distance[1:-1, 1:-1] / width
    roll = np.clip(1.0 - distance / p.edge_width, 0.0, 1.0)
    thickness = np.sqrt(1.0 - roll * roll)

    # Fibroglandular tissue: where the score is high, inside the fat envelope.
    fibres = radial_texture(
        (height, width), nipple_xy, p.beta_texture, p.fibre_anisotropy, p.aspect, texture_rng
    )
    score = _glandular_score(breast, nipple_xy, fibres, p, texture_rng)
    eligible = _fat_envelope(breast, pectoral, p)
    dense = dense_mask_from_score(score, tissue_region, eligible, p.target_pd)
    # Glandular fraction: the mask with soft edges, denser deeper inside (higher score);
    # faint sub-threshold tissue outside. The bright tissue is exactly the mask's.
    threshold = score[dense].min() if dense.any() else score[tissue_region].max()
    softness = 0.35 * float(score[tissue_region].std() + 1e-6)
    depth = 1.0 / (1.0 + np.exp(-np.clip((score - threshold) / softness, -30, 30)))
    edge = cv2.GaussianBlur(dense.astype(np.float32), (0, 0), 0.02 * width)
    glandular = edge * (0.75 + 0.25 * depth) + 0.15 * depth * (1.0 - edge) * eligible
    fine = radial_texture(
        (height, width), nipple_xy, 2.6, p.fibre_anisotropy, p.aspect, texture_rng
    )
    glandular = np.clip(glandular * (0.85 + 0.2 * fine), 0.0, 1.2)
    ligaments = _ligaments((height, width), p, texture_rng) * (1.0 - 0.7 * glandular)
    vessels = _vessels(breast, nipple_xy, p, texture_rng)
    trabeculae = _trabeculae(fibres, p, texture_rng) * (1.0 - 0.6 * glandular)

    # Projection: log-attenuation along the beam, fat = 1 at full thickness.
    structure = (
        glandular
        + p.ligaments * ligaments
        + p.trabeculae * trabeculae
        + 0.35 * vessels
        + p.fine_texture * fine
    )
    signal = thickness * (1.0 + p.gland_contrast * structure)
    signal += p.equalisation * (1.0 - thickness)  # peripheral equalisation
    skin = breast & ~cv2.erode(breast.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    signal[skin] += 0.15 * p.gland_contrast
    gray = display(signal, p, texture_rng).astype(np.float32)
    if p.sharpen > 0:  # local contrast enhancement of processed digital images
        # Unsharp masking with soft limits, as vendors' multi-scale processing does: faint
        # detail is amplified, large steps (the border of dense tissue) are not blown out.
        detail = gray - cv2.GaussianBlur(gray, (0, 0), p.sharpen_radius * width)
        gray += p.sharpen * 0.04 * np.tanh(detail / 0.04)

    # Detector: resolution, blur, noise (film: coarser grain).
    if p.resolution > 1.05:
        small = (max(8, int(width / p.resolution)), max(8, int(height / p.resolution)))
        gray = cv2.resize(cv2.resize(gray, small, interpolation=cv2.INTER_AREA), (width, height))
    gray = cv2.GaussianBlur(gray, (0, 0), p.blur_sigma)
    noise = texture_rng.normal(0.0, 1.0, size=gray.shape).astype(np.float32)
    if p.film:
        noise = cv2.GaussianBlur(noise, (0, 0), 0.8) * 2.0
    gray += p.noise_sigma * noise * np.sqrt(np.clip(gray, 0.05, 1.0))  # quantum-like
    image = np.clip(np.round(255.0 * gray), 1, 255).astype(np.uint8)  # breast never 0
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
