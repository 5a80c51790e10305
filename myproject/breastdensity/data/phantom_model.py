"""The phantom generator's maths: what one synthetic mammogram is made of, and how it forms.

Each phantom imitates a mammogram after the reference's preprocessing: 8-bit
gray, background exactly 0, breast cropped at the skin line, chest wall on the
image edge (right edge for right breasts, nipple pointing left; left breasts
mirrored), and for MLO views the pectoral muscle replaced by the mean breast
gray value. Recipe, per image (lengths relative to the image width):

1. Outline: a super-ellipse against the chest wall (CC), or a tilted one with
   an axillary tail and a pectoral triangle in the upper chest-wall corner (MLO).
2. Compressed breast: full thickness inside, rounded roll-off under the skin.
3. Tissue built from structures: a glandular score (smooth prior behind the
   nipple + anisotropic power-law texture, beta ~ 3.2 CC / 3.3 MLO, + fibrous
   texture converging on the nipple) inside a subcutaneous and retromammary
   fat envelope; Cooper's ligaments as thin septa bounding fat lobules
   (warped Voronoi cells); a fine reticular mesh of trabeculae through the
   fat (zero crossings of a random field); vessels. Textures are made in a
   frame ``aspect`` times taller and squeezed, as stage 0's crop and the
   square network input squeeze a real breast.
4. Dense mask: exactly the target percent density (PD) of the breast area
   (pectoral excluded) where the glandular score is highest; the image uses
   the soft glandular fraction, so the mask is exact ground truth of the
   bright tissue without being a hard-edged cloud.
5. Projection and display: log-attenuation signal (fat 1, gland
   1 + contrast), peripheral equalisation (strong on digital images, so the
   fat's texture reaches the skin), a VOI window below fat and above gland
   (fat textured, dense tissue seldom burnt out), display curve (linear,
   sigmoid, log), gamma, local contrast enhancement with soft limits (half of
   the digital images heavily); detector resolution, blur and quantum-like
   noise; 30 % scanned-film look (characteristic curve, grain, softer).

Every step varies per image (domain randomisation) so that no single
system's look or global statistic gives the class away: ``sample_parameters``
draws the parameters from the ranges below, ``render_phantom`` turns them into
an image and its masks.
How close the result is to real mammograms is measured by ``tools/realism.py``.

Labels follow the BI-RADS 4th-edition bands of PD: A < 25 %, B 25-50 %,
C 50-75 %, D > 75 %.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..conventions import PROJECTIONS

# Written to every manifest row: images of one version and seed are identical.
GENERATOR_VERSION = "3"
BIRADS_BANDS = {"A": (0.0, 25.0), "B": (25.0, 50.0), "C": (50.0, 75.0), "D": (75.0, 100.0)}
# PD is sampled inside these sub-bands by default (margins between classes).
PD_SAMPLING_BANDS = {"A": (2.0, 22.0), "B": (27.0, 48.0), "C": (53.0, 73.0), "D": (78.0, 92.0)}
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


# ----------------------------------------------------------------------------
# The sampled ranges
# ----------------------------------------------------------------------------
# Every image draws its parameters uniformly from these (low, high) ranges unless the
# comment says otherwise. They are wide on purpose (domain randomisation): a model
# should find density in the tissue, not in one system's look. Units: lengths are
# fractions of the image width; the log-signal is the log-attenuation, 1 for fat at
# full thickness and 1 + gland_contrast for glandular tissue; gray levels are on the
# 0-1 display scale.

# The view's PD is the subject's PD plus this jitter (PD points): the four views of one
# woman differ a little, as a reader's estimates on CC and MLO views do. It is clipped
# to the class's band in PD_SAMPLING_BANDS, so the label stays right.
PD_JITTER = (-2.0, 2.0)
# With label noise the subject's PD may lie outside its class band; the view's PD is
# then clipped to these limits instead: every breast keeps some dense tissue and some fat.
PD_LIMITS = (0.5, 97.0)

# Share of images with a scanned screen-film look, the rest digital: real collections
# mix both (mini-MIAS, which the shipped models learn from, is scanned film).
FILM_SHARE = 0.3
# Share of digital images whose local contrast is enhanced heavily, as some vendors'
# processing does; the others are enhanced mildly.
STRONG_ENHANCEMENT_SHARE = 0.5

# Spectral exponent beta of the anatomical texture, power spectrum ~ 1/f^beta: drawn
# from a normal distribution around the means published for mammograms, with this
# standard deviation, and clipped so that no image is white noise or a smooth blur.
TEXTURE_BETA_MEAN = {"CC": 3.17, "MLO": 3.30}
TEXTURE_BETA_SD = 0.23
TEXTURE_BETA_LIMITS = (2.5, 3.6)

ANATOMY_RANGES = {
    # Height / width of the breast that the image frame squeezes: textures are made this
    # much taller, then squeezed, as stage 0's tight crop and the square network input
    # squeeze a real breast. From a short, wide CC view to a long MLO view.
    "aspect": (1.2, 3.2),
    # How much longer the fibrous structures are toward the nipple than across: from a
    # faint to a strong fan of ducts and trabeculae converging on the nipple.
    "fibre_anisotropy": (2.0, 8.0),
    # Depth of the compressed-thickness roll-off under the skin (fraction of the width):
    # the thin, uncompressed rim that peripheral equalisation then brightens.
    "edge_width": (0.08, 0.20),
    # Subcutaneous fat layer without glandular tissue (fraction of the width, thinner in
    # dense breasts): a dark band between skin and gland, as on real mammograms.
    "fat_envelope": (0.03, 0.08),
    # Extra log-attenuation of glandular over fatty tissue (log-signal): their contrast
    # changes with the X-ray spectrum and the breast's thickness; the low end keeps dense
    # tissue visible, the high end is a hard contrast.
    "gland_contrast": (0.35, 1.0),
    # Strength of Cooper's ligaments (units of gland_contrast): faint lines, far weaker
    # than a dense patch, so that they add structure to the fat but no density.
    "ligaments": (0.05, 0.25),
    # Half width of the ligaments (fraction of the width): about 1-2 pixels at the
    # default 520-pixel width, the thin lines of a real mammogram.
    "ligament_width": (0.0015, 0.0035),
    # Fine fibrous texture everywhere (units of gland_contrast): from none to faint.
    "fine_texture": (0.0, 0.25),
    # The reticular mesh of trabeculae through the fat (units of gland_contrast): real fat
    # is never featureless; weaker than gland, so it textures the fat without adding density.
    "trabeculae": (0.2, 0.7),
    # Spectral exponent of the mesh's random field: the lower, the finer the mesh.
    "trabecular_beta": (2.3, 3.2),
    # Number of vessels from the chest wall toward the nipple: 2 to 6 (high end excluded).
    "vessels": (2, 7),
}

DISPLAY_RANGES = {
    # Low end of the VOI window (log-signal): below the fat's 1, so the fat's texture and
    # the thinner periphery stay visible instead of being clipped to one gray.
    "window_low": (0.55, 0.92),
    # High end of the VOI window, in units of gland_contrast above 1 (1 + gland_contrast
    # times this): above the glandular tissue, so dense tissue is bright, seldom burnt out.
    "window_high": (1.1, 1.7),
    # Gamma of the display: from slightly lighter (< 1) to much darker mid-tones (> 2),
    # the spread of vendors' "for presentation" looks.
    "gamma": (0.8, 2.6),
    # Display gray of the window's low end: fat is never black, so the breast stays apart
    # from the 0 background.
    "output_low": (0.07, 0.25),
    # Display gray of the window's high end: the brightest tissue near white.
    "output_high": (0.80, 1.0),
    # Gain of the local contrast enhancement (unsharp mask, soft-limited) of digital images:
    # mild or, for STRONG_ENHANCEMENT_SHARE of them, strong. Film images are not enhanced.
    "sharpen_mild": (0.0, 2.0),
    "sharpen_strong": (2.0, 4.0),
    # Radius (Gaussian sigma, fraction of the width) of that enhancement, log-uniform: about
    # 5-16 pixels at the default width, the size of ligaments and small dense patches.
    "sharpen_radius": (0.01, 0.03),
    # Quantum-like noise (display gray at full brightness, scaled by the square root of the
    # gray): about 1-5 gray levels of 255, from a clean to a noisy detector.
    "noise_sigma": (0.004, 0.02),
}

# What differs between a scanned film and a digital detector. Equalisation: digital
# processing flattens the thin periphery strongly, so structure reaches the skin; film
# does not (its periphery is often dark). Blur (Gaussian sigma, pixels at the default
# 520-pixel width, scaled with the width, at least BLUR_MIN): film and scanner are softer.
# Resolution (detector pixel / image pixel; above 1 the image is made coarser, then
# upsampled): a digital detector about matches the image, a film scan is coarser.
DETECTOR_RANGES = {
    "digital": {"equalisation": (0.6, 1.0), "blur_sigma": (0.3, 1.0), "resolution": (1.0, 1.5)},
    "film": {"equalisation": (0.0, 0.6), "blur_sigma": (0.8, 1.8), "resolution": (1.2, 2.2)},
}
BLUR_REFERENCE_WIDTH = 520.0  # pixels: the blur ranges are for the default 650 x 520 images
BLUR_MIN = 0.3  # pixels: some blur even on small images


def sample_parameters(
    projection: str,
    label: str,
    subject_pd: float,
    height: int,
    width: int,
    rng: np.random.Generator,
) -> PhantomParameters:
    """Per-image parameters drawn from the ranges above; the subject's PD is jittered per view.

    The order of the draws fixes the images of a seed: a new draw goes at the end.
    """

    def draw(low_high: tuple[float, float], digits: int = 3) -> float:
        return round(float(rng.uniform(*low_high)), digits)

    low, high = PD_SAMPLING_BANDS[label]
    target_pd = float(np.clip(subject_pd + rng.uniform(*PD_JITTER), low, high))
    if not low <= subject_pd <= high:  # label noise: the subject's PD may lie outside
        target_pd = float(np.clip(subject_pd + rng.uniform(*PD_JITTER), *PD_LIMITS))
    film = bool(rng.random() < FILM_SHARE)
    detector = DETECTOR_RANGES["film" if film else "digital"]
    equalisation = draw(detector["equalisation"])
    window_low = draw(DISPLAY_RANGES["window_low"])
    strong = bool(rng.random() < STRONG_ENHANCEMENT_SHARE)
    gland_contrast = rng.uniform(*ANATOMY_RANGES["gland_contrast"])
    window_high = 1.0 + gland_contrast * rng.uniform(*DISPLAY_RANGES["window_high"])
    aspect = draw(ANATOMY_RANGES["aspect"])
    beta_mean = TEXTURE_BETA_MEAN["CC" if projection.startswith("CC") else "MLO"]
    beta_texture = np.clip(rng.normal(beta_mean, TEXTURE_BETA_SD), *TEXTURE_BETA_LIMITS)
    fibre_anisotropy = draw(ANATOMY_RANGES["fibre_anisotropy"])
    edge_width = draw(ANATOMY_RANGES["edge_width"])
    fat_envelope = draw(ANATOMY_RANGES["fat_envelope"])
    ligaments = draw(ANATOMY_RANGES["ligaments"])
    fine_texture = draw(ANATOMY_RANGES["fine_texture"])
    ligament_width = draw(ANATOMY_RANGES["ligament_width"], digits=5)
    trabeculae = draw(ANATOMY_RANGES["trabeculae"])
    trabecular_beta = draw(ANATOMY_RANGES["trabecular_beta"])
    vessels = int(rng.integers(*ANATOMY_RANGES["vessels"]))
    display_curve = str(rng.choice(DISPLAY_CURVES))
    gamma = draw(DISPLAY_RANGES["gamma"])
    sharpen = 0.0
    if not film:
        sharpen = draw(DISPLAY_RANGES["sharpen_strong" if strong else "sharpen_mild"])
    radius_low, radius_high = DISPLAY_RANGES["sharpen_radius"]
    sharpen_radius = round(float(np.exp(rng.uniform(np.log(radius_low), np.log(radius_high)))), 4)
    output_low = draw(DISPLAY_RANGES["output_low"])
    output_high = draw(DISPLAY_RANGES["output_high"])
    scale = width / BLUR_REFERENCE_WIDTH
    blur_sigma = max(BLUR_MIN, draw(detector["blur_sigma"]) * scale)
    resolution = draw(detector["resolution"])
    noise_sigma = draw(DISPLAY_RANGES["noise_sigma"])

    return PhantomParameters(
        projection=projection,
        label=label,
        target_pd=round(target_pd, 3),
        height=height,
        width=width,
        aspect=aspect,
        beta_texture=round(float(beta_texture), 3),
        fibre_anisotropy=fibre_anisotropy,
        edge_width=edge_width,
        fat_envelope=fat_envelope,
        gland_contrast=round(float(gland_contrast), 3),
        ligaments=ligaments,
        fine_texture=fine_texture,
        ligament_width=ligament_width,
        trabeculae=trabeculae,
        trabecular_beta=trabecular_beta,
        vessels=vessels,
        equalisation=equalisation,
        display_curve=display_curve,
        window_low=window_low,
        window_high=round(float(window_high), 3),
        gamma=gamma,
        sharpen=sharpen,
        sharpen_radius=sharpen_radius,
        output_low=output_low,
        output_high=output_high,
        blur_sigma=round(blur_sigma, 3),
        resolution=resolution,
        noise_sigma=noise_sigma,
        film=film,
        outline_seed=int(rng.integers(2**31)),
        texture_seed=int(rng.integers(2**31)),
    )


# ----------------------------------------------------------------------------
# Image formation
# ----------------------------------------------------------------------------


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


def _outline(projection: str, height: int, width: int, rng: np.random.Generator):
    """Breast and pectoral masks for a right breast (chest wall on the right edge).

    Returns (breast, pectoral, nipple_xy); pectoral is inside breast.
    Coordinates: u = distance from the chest wall / width, v = row / height.
    """
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    u = (width - 1 - cols) / width
    v = rows / height
    reach = rng.uniform(0.90, 0.97)  # nipple distance from the chest wall: the crop is tight
    exponent = rng.uniform(1.7, 2.4)  # of the super-ellipse: from pointed to full, round breasts
    pectoral = np.zeros((height, width), bool)
    if projection.startswith("CC"):
        centre = rng.uniform(0.46, 0.54)  # nipple height: about the middle, as stage 0 crops it
        # Half heights above and below the nipple: the breast fills most of the cropped height.
        half_top, half_bottom = rng.uniform(0.40, 0.48), rng.uniform(0.40, 0.48)
        half = np.where(v < centre, half_top, half_bottom)
        breast = (u / reach) ** exponent + (np.abs(v - centre) / half) ** 2 <= 1.0
        nipple_v = centre
    else:
        # MLO: the skin line runs from the axilla on the top edge, out to the
        # nipple (lower than the middle: the breast is pulled down and out) and
        # back to the chest wall at the inframammary fold near the bottom.
        top_reach = rng.uniform(0.38, 0.55)  # axillary tail width at the top edge
        nipple_v = rng.uniform(0.52, 0.64)  # nipple height, fraction of the image height
        fold_v = rng.uniform(0.86, 0.98)  # inframammary fold, near the bottom edge
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
        pect_width = rng.uniform(0.45, 0.8) * top_reach  # at the top edge, inside the axilla
        pect_height = rng.uniform(0.40, 0.70)  # down the chest wall, to about the nipple
        curvature = rng.uniform(0.8, 1.0)  # < 1: a slightly convex muscle edge
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
    # The prior peaks a third to half of the way from the nipple to the chest wall, near the
    # nipple's height, and spreads over about a third of the breast: the glandular cone.
    centre_x = nipple_xy[0] + rng.uniform(0.30, 0.50) * (chest_x - nipple_xy[0])
    centre_y = nipple_xy[1] + rng.uniform(-0.08, 0.08) * height
    spread_x, spread_y = rng.uniform(0.30, 0.45) * width, rng.uniform(0.25, 0.40) * height
    prior = -(((cols - centre_x) / spread_x) ** 2 + ((rows - centre_y) / spread_y) ** 2)
    texture = power_law_noise((height, width), p.beta_texture, rng, p.aspect)
    # Prior weight: from patchy tissue (texture dominates) to one compact glandular region.
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
    count = int(rng.uniform(80, 350) * p.aspect)  # fat lobules: from large to small ones
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
        s = np.linspace(0.0, rng.uniform(0.5, 0.95), 40)[:, None]  # reaching 50-95 % of the way
        direction = target - start
        normal = np.array([-direction[1], direction[0]]) / (np.linalg.norm(direction) + 1e-6)
        wiggle = sum(
            rng.uniform(-0.012, 0.012) * width * np.sin(np.pi * k * s + rng.uniform(0, 6.3))
            for k in (1, 3, 7)
        )
        points = start + s * direction + wiggle * normal
        thickness = max(1, int(round(rng.uniform(0.002, 0.004) * width)))  # 1-2 px at 520 px
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


@dataclass
class Phantom:
    """One rendered phantom: the image, its masks and what defined it."""

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
