"""Region maps: an XRAI-style summary of any pixel attribution map.

XRAI (Kapishnikov et al., 2019) segments the image at several scales, then
builds the map greedily: among the candidate regions it adds the one whose
*new* pixels have the highest mean attribution (the "gain"), gives those
pixels that gain as their value, and repeats until nothing is left. The result
is constant on each added piece, and ranks whole regions instead of pixels.

    regions = segment_regions(gray)                 # (R, H, W) candidate regions
    region_map = xrai_map(pixel_map, regions)       # (H, W), one value per added piece

Where this differs from the published XRAI (the PAIR ``saliency`` library):

* **Any pixel method.** The pixel attributions are the absolute maps of any
  method (``attributions``), as the LaTIM poster uses them; XRAI uses
  Integrated Gradients with a black and a white reference, signed.
* **Gray images at the network input size.** Felzenszwalb segmentation
  (scikit-image) at XRAI's scales (50 ... 1200) and sigma (0.8), on the gray
  image rescaled to [-1, 1] like XRAI, but at the network input size instead of
  a 224-px resize; XRAI's minimum segment size (150 px) and dilation radius
  (5 px), set for 224 px, are scaled to the image (by area and by side).
* **Exhaustive greedy search** as XRAI's full (not "fast") version, with the
  gains kept up to date incrementally (each pixel is removed from the
  candidates' sums once), so a 128-px map takes tens of milliseconds.

Candidates are held as one dense (R, H*W) boolean matrix: fine at network input
sizes up to a few hundred pixels, not meant for full-resolution mammograms.
"""

from __future__ import annotations

import cv2
import numpy as np
from skimage.segmentation import felzenszwalb

XRAI_SCALES = (50, 100, 150, 250, 500, 1200)
XRAI_SIGMA = 0.8
XRAI_SIDE = 224  # XRAI segments a 224 x 224 resize; its sizes below are for that side
XRAI_MIN_SEGMENT = 150  # pixels
XRAI_DILATION = 5  # pixels
XRAI_MIN_NEW_PIXELS = 50  # a candidate that would add fewer new pixels is dropped


def segment_regions(
    gray: np.ndarray,
    scales=XRAI_SCALES,
    sigma: float = XRAI_SIGMA,
    dilation: int | None = None,
) -> np.ndarray:
    """Candidate regions: every segment of a Felzenszwalb segmentation at each scale.

    Args:
        gray: (H, W) image (any range; rescaled to [-1, 1]).
        scales: Felzenszwalb ``scale`` values, one segmentation each.
        sigma: Gaussian smoothing before segmenting.
        dilation: radius (pixels) each segment is dilated by; None: XRAI's 5 px
            scaled to the image side; 0: no dilation (segments of one scale then
            tile the image).

    Returns:
        (R, H, W) boolean candidate regions.
    """
    gray = np.asarray(gray, np.float64).reshape(np.shape(gray)[:2])
    low, high = gray.min(), gray.max()
    image = 2 * (gray - low) / (high - low) - 1 if high > low else np.zeros_like(gray)
    ratio = min(gray.shape) / XRAI_SIDE
    min_size = max(1, round(XRAI_MIN_SEGMENT * ratio**2))
    radius = round(XRAI_DILATION * ratio) if dilation is None else dilation
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    regions = []
    for scale in scales:
        labels = felzenszwalb(image, scale=scale, sigma=sigma, min_size=min_size)
        for label in range(labels.max() + 1):
            segment = (labels == label).astype(np.uint8)
            regions.append((cv2.dilate(segment, kernel) if radius else segment).astype(bool))
    return np.stack(regions)


def xrai_map(
    attribution: np.ndarray, regions: np.ndarray, min_new_pixels: int | None = None
) -> np.ndarray:
    """Region map: greedily add the region of highest attribution gain, as XRAI does.

    Args:
        attribution: (H, W) pixel map, e.g. the absolute value of any attribution.
        regions: (R, H, W) boolean candidates (``segment_regions``).
        min_new_pixels: candidates adding fewer new pixels are dropped; None:
            XRAI's 50 px scaled by area.

    Returns:
        (H, W) map: each pixel holds the gain (mean attribution of the pixels
        added with it) of the step that added it; pixels no region added get
        the mean attribution of that remainder.
    """
    attribution = np.asarray(attribution, np.float64)
    pixels = attribution.ravel()
    candidates = regions.reshape(len(regions), -1)
    if min_new_pixels is None:
        min_new_pixels = max(1, round(XRAI_MIN_NEW_PIXELS * attribution.size / XRAI_SIDE**2))
    sums = candidates @ pixels  # attribution of each candidate's pixels not yet added
    counts = candidates.sum(axis=1).astype(np.float64)  # ... and their number
    alive = counts >= min_new_pixels
    added = np.zeros(pixels.size, bool)
    result = np.zeros(pixels.size)
    while alive.any():
        gains = np.where(alive, sums / np.maximum(counts, 1), -np.inf)
        best = int(np.argmax(gains))
        new = np.flatnonzero(candidates[best] & ~added)
        result[new] = gains[best]
        added[new] = True
        # the new pixels no longer count for any candidate
        sums -= candidates[:, new] @ pixels[new]
        counts -= candidates[:, new].sum(axis=1)
        alive &= counts >= min_new_pixels
        alive[best] = False
    if not added.all():
        result[~added] = pixels[~added].mean()
    return result.reshape(attribution.shape)


__all__ = ["XRAI_SCALES", "segment_regions", "xrai_map"]
