"""Do the maps show the dense tissue? Scores for explanation maps.

* Localisation against a dense-tissue mask, inside the breast (background and
  pectoral muscle excluded): ROC AUC of map values for dense vs other breast
  pixels, pointing game, relevance mass, best Dice over thresholds, and the
  rank correlation between image brightness and map.
* Fidelity, no mask needed: deletion and insertion curves.
* Sanity check: maps of a randomly initialised network must differ.
* Robustness: the same map after a change of the image (noise, warps ...).
* A model-free dense-tissue estimate (for images without masks), in the spirit
  of LIBRA: cluster the intensities of the breast and take the brightest.

Maps are (H, W) arrays in [0, 1]; masks and regions are boolean arrays of the
same shape. Localisation is scored at the original image size (maps stretched
back with ``cam.to_image_size``); fidelity and robustness work on the square
network input.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from scipy.stats import spearmanr
from skimage.filters import threshold_multiotsu
from skimage.metrics import structural_similarity
from sklearn.metrics import roc_auc_score

from ..cam import to_image_size
from ..conventions import CLASSES, dense_mask_path, list_class_images, projection_test_folder
from ..preprocessing import normalize, read_grayscale, read_mask, resize

# ----------------------------------------------------------------------------
# Where to score: the breast without the pectoral muscle
# ----------------------------------------------------------------------------


def chest_wall_side(image: np.ndarray, projection: str | None = None) -> str:
    """'right' or 'left': the image edge the chest wall lies on."""
    if projection:
        return "right" if projection.endswith("_R") else "left"
    return "right" if (image[:, -1] > 0).sum() >= (image[:, 0] > 0).sum() else "left"


def pectoral_region(image: np.ndarray, projection: str | None = None) -> np.ndarray:
    """The pectoral muscle as the reference's preprocessing left it: a uniform gray patch.

    The connected region of pixels equal to the gray value of the top
    chest-wall corner (where the muscle lies in MLO views); empty for CC views,
    when that corner is background, or when the region covers less than 1 % of
    the breast. (Taking the corner's value, not the most frequent one: a
    saturated or clipped area of the breast can be larger than the muscle.)
    """
    if projection is not None and not projection.startswith("MLO"):
        return np.zeros(image.shape, bool)
    breast = image > 0
    if not breast.any():
        return np.zeros(image.shape, bool)
    corner_column = image.shape[1] - 1 if chest_wall_side(image, projection) == "right" else 0
    if image[0, corner_column] == 0:
        return np.zeros(image.shape, bool)
    candidate = (image == image[0, corner_column]).astype(np.uint8)
    _, labels = cv2.connectedComponents(candidate, connectivity=4)
    label = labels[0, corner_column]
    if label == 0:
        return np.zeros(image.shape, bool)
    region = labels == label
    return region if region.sum() >= 0.01 * breast.sum() else np.zeros(image.shape, bool)


def scoring_region(image: np.ndarray, projection: str | None = None) -> np.ndarray:
    """Breast pixels (non-zero) minus the pectoral muscle."""
    return (image > 0) & ~pectoral_region(image, projection)


# ----------------------------------------------------------------------------
# Localisation
# ----------------------------------------------------------------------------


def roc_auc(cam: np.ndarray, mask: np.ndarray, region: np.ndarray) -> float:
    """Probability that a dense pixel scores higher than a non-dense one (NaN if one is absent)."""
    truth = mask[region]
    if truth.all() or not truth.any():
        return float("nan")
    return float(roc_auc_score(truth, cam[region]))


def pointing_game(cam: np.ndarray, mask: np.ndarray, region: np.ndarray) -> float:
    """1.0 if the map's maximum inside the region falls on dense tissue, else 0.0."""
    values = np.where(region, cam, -np.inf)
    return float(mask.flat[int(np.argmax(values))])


def relevance_mass(cam: np.ndarray, mask: np.ndarray, region: np.ndarray) -> float:
    """Share of the map's total value (inside the region) that lies on dense tissue."""
    total = float(cam[region].sum())
    return float(cam[region & mask].sum()) / total if total > 0 else float("nan")


def best_dice(cam: np.ndarray, mask: np.ndarray, region: np.ndarray, thresholds: int = 50) -> float:
    """Highest Dice between ``cam >= t`` and the mask, over ``thresholds`` quantiles of the map."""
    values, truth = cam[region], mask[region]
    if not truth.any():
        return float("nan")
    best = 0.0
    for level in np.unique(np.quantile(values, np.linspace(0, 1, thresholds, endpoint=False))):
        predicted = values >= level
        dice = 2 * np.sum(predicted & truth) / (predicted.sum() + truth.sum())
        best = max(best, float(dice))
    return best


def image_map_correlation(image: np.ndarray, cam: np.ndarray, region: np.ndarray) -> float:
    """Spearman rank correlation of image brightness and map value inside the region."""
    if region.sum() < 3:
        return float("nan")
    return float(spearmanr(image[region], cam[region]).statistic)


def localisation_scores(cam, mask, region, image=None) -> dict[str, float]:
    scores = {
        "auc": roc_auc(cam, mask, region),
        "pointing_game": pointing_game(cam, mask, region),
        "relevance_mass": relevance_mass(cam, mask, region),
        "best_dice": best_dice(cam, mask, region),
    }
    if image is not None:
        scores["image_map_spearman"] = image_map_correlation(image, cam, region)
    return scores


# ----------------------------------------------------------------------------
# Fidelity: deletion and insertion
# ----------------------------------------------------------------------------


@dataclass
class FidelityCurves:
    fractions: np.ndarray  # (steps + 1,) share of breast pixels changed
    deletion: np.ndarray  # class probability while the most relevant pixels are removed
    insertion: np.ndarray  # ... while they are restored on a blank (mean gray) breast
    deletion_auc: float  # lower is better
    insertion_auc: float  # higher is better


# Class values whose expectation is the density score the density map's
# deletion and insertion curves track: 0 for A ... 1 for D.
DENSITY_SCORE_VALUES = np.linspace(0.0, 1.0, 4, dtype=np.float32)


def fidelity_curves(model, gray, cam, region, target: int, steps: int = 20) -> FidelityCurves:
    """Deletion and insertion curves (Petsiuk et al., 2018) on the network input.

    Args:
        model: classifier with softmax output.
        gray: (S, S) or (S, S, 1) resized image in [0, 255] (``preprocessing.load_resized``).
        cam: (S, S) map.
        region: (S, S) breast pixels to rank and replace (background never changes).
        target: class whose probability is tracked, or one value per class
            (``DENSITY_SCORE_VALUES``): their expectation under the model's
            probabilities is tracked (the density score, for the density map).
        steps: points of the curves after the start.

    Pixels of the region are ranked by decreasing map value. Deletion replaces
    the first k by the breast's mean gray; insertion starts from a breast filled
    with its mean gray and restores the first k. Every modified image is
    normalised like any input. Areas are means of the trapezoid rule over the
    fraction of pixels in [0, 1].
    """
    gray = np.asarray(gray, np.float32).reshape(cam.shape)
    order = np.flatnonzero(region.ravel())
    order = order[np.argsort(-cam.ravel()[order], kind="stable")]
    mean_gray = float(gray[region].mean()) if region.any() else 0.0
    counts = np.round(np.linspace(0, len(order), steps + 1)).astype(int)
    blank = gray.copy()
    blank[region] = mean_gray
    deleted, inserted = [], []
    for count in counts:
        chosen = order[:count]
        image = gray.copy().ravel()
        image[chosen] = mean_gray
        deleted.append(image.reshape(gray.shape))
        image = blank.copy().ravel()
        image[chosen] = gray.ravel()[chosen]
        inserted.append(image.reshape(gray.shape))
    batch = normalize(np.stack(deleted + inserted)[..., None]).numpy()
    probabilities = model.predict(batch, verbose=0, batch_size=16)
    if np.ndim(target) == 0:
        probabilities = probabilities[:, int(target)]
    else:  # expected value of the classes' values
        probabilities = probabilities @ np.asarray(target, np.float32)
    deletion, insertion = probabilities[: steps + 1], probabilities[steps + 1 :]
    fractions = counts / max(len(order), 1)
    return FidelityCurves(
        fractions,
        deletion,
        insertion,
        float(np.trapezoid(deletion, fractions)),
        float(np.trapezoid(insertion, fractions)),
    )


# ----------------------------------------------------------------------------
# Sanity check and robustness
# ----------------------------------------------------------------------------


def rank_correlation(
    first: np.ndarray, second: np.ndarray, region: np.ndarray | None = None
) -> float:
    """Spearman correlation of two maps (inside ``region``); NaN if one is constant."""
    region = np.ones(first.shape, bool) if region is None else region
    a, b = first[region], second[region]
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


SANITY_THRESHOLD = 0.5  # |rank correlation| above this with a random network: the method fails


def map_ssim(first: np.ndarray, second: np.ndarray) -> float:
    """Structural similarity of two maps in [0, 1]."""
    return float(structural_similarity(first, second, data_range=1.0))


@dataclass
class Transformation:
    """A change of the (S, S) gray image in [0, 255] and, for geometric ones, its inverse for maps."""

    name: str
    apply: object  # (image, rng) -> image
    undo: object = None  # map -> map in the original frame (None: not geometric)
    valid: object = None  # shape -> bool mask of original pixels still seen after the change

    def inverse(self, cam):
        return cam if self.undo is None else self.undo(cam)


def _inside_breast(function):
    def wrapped(image, rng):
        changed = function(image, rng)
        return np.where(image > 0, np.clip(changed, 1, 255), 0).astype(np.float32)

    return wrapped


def _affine_matrix(size, angle=8.0, scale=1.06, shift=(0.04, -0.03)):
    centre = ((size[1] - 1) / 2, (size[0] - 1) / 2)
    matrix = cv2.getRotationMatrix2D(centre, angle, scale)
    matrix[:, 2] += (shift[0] * size[1], shift[1] * size[0])
    return matrix


def _warp(array, matrix):
    height, width = array.shape[:2]
    return cv2.warpAffine(
        array.astype(np.float32),
        matrix,
        (width, height),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )


def transformations(size: tuple[int, int]) -> list[Transformation]:
    """The thesis' six changes of the input image (all deterministic given the rng)."""
    matrix = _affine_matrix(size)
    inverse = cv2.invertAffineTransform(matrix)

    def black_rectangle(image, rng):
        changed = image.copy()
        height, width = image.shape
        h, w = max(1, height // 6), max(1, width // 6)
        top, left = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
        changed[top : top + h, left : left + w] = 0
        return changed

    def valid_after_warp(shape):
        return _warp(np.ones(shape, np.float32), matrix)[...] > 0.99

    return [
        Transformation("log", _inside_breast(lambda x, rng: 255 * np.log1p(x) / np.log1p(255.0))),
        Transformation(
            "gaussian_noise", _inside_breast(lambda x, rng: x + rng.normal(0, 0.05 * 255, x.shape))
        ),
        Transformation(
            "speckle_noise", _inside_breast(lambda x, rng: x + x * rng.normal(0, 0.1, x.shape))
        ),
        Transformation("black_rectangle", black_rectangle),
        Transformation(
            "affine",
            lambda x, rng: _warp(x, matrix),
            undo=lambda cam: _warp(cam, inverse),
            valid=lambda shape: _warp(valid_after_warp(shape).astype(np.float32), inverse) > 0.99,
        ),
        Transformation(
            "rotate_180",
            lambda x, rng: np.rot90(x, 2).copy(),
            undo=lambda cam: np.rot90(cam, 2).copy(),
        ),
    ]


# ----------------------------------------------------------------------------
# Dense tissue without a mask (LIBRA-like estimate)
# ----------------------------------------------------------------------------


def estimate_dense_mask(
    image: np.ndarray, projection: str | None = None, classes: int = 2
) -> np.ndarray:
    """Model-free dense-tissue estimate for images without a reference mask.

    Inside the breast (pectoral excluded), eroded away from the skin line by 2 %
    of the image width, the intensities are split into ``classes`` clusters by
    Otsu's threshold (multi-level Otsu for classes > 2, scikit-image); the
    brightest cluster is called dense. Two classes matched the phantoms' true
    masks better than three. Like LIBRA it relies on dense tissue being brighter
    than fat after the image's own processing; it is an estimate, not a ground truth.
    """
    region = scoring_region(image, projection)
    radius = max(1, round(0.02 * image.shape[1]))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    inner = cv2.erode(region.astype(np.uint8), kernel).astype(bool)
    values = image[inner]
    if values.size < 10 or np.ptp(values) == 0:
        return np.zeros(image.shape, bool)
    thresholds = threshold_multiotsu(values, classes=classes)
    return inner & (image > thresholds[-1])


def percent_density(mask: np.ndarray, region: np.ndarray) -> float:
    return 100.0 * float((mask & region).sum()) / max(int(region.sum()), 1)


# ----------------------------------------------------------------------------
# Scoring a folder of images (used by Explainability_evaluation.ipynb)
# ----------------------------------------------------------------------------

SCORE_COLUMNS = [
    "image",
    "projection",
    "method",
    "auc",
    "pointing_game",
    "relevance_mass",
    "best_dice",
    "deletion_auc",
    "insertion_auc",
    "image_map_spearman",
    "true_label",
    "predicted_label",
    "mask_source",
]
ROBUSTNESS_COLUMNS = [
    "image",
    "method",
    "transformation",
    "prediction_kept",
    "map_similarity",
    "map_ssim",
    "projection",
]


@dataclass
class PreparedImage:
    """One test image in both frames: original (for localisation) and network input."""

    name: str
    projection: str
    true_label: str
    original: np.ndarray  # uint8 (H, W)
    region: np.ndarray  # bool (H, W): breast without pectoral
    mask: np.ndarray  # bool (H, W): dense tissue
    mask_source: str  # "reference" (a mask file) or "estimate" (estimate_dense_mask)
    resized: np.ndarray  # float32 (S, S) in [0, 255], the network's view before normalisation
    network_region: np.ndarray  # bool (S, S)


def prepare_image(record, projection: str, size, mask_path=None) -> PreparedImage:
    """Read an image (and its mask, if the file exists; else estimate one)."""
    gray = read_grayscale(record.path)
    original = np.uint8(np.round(gray))
    region = scoring_region(original, projection)
    if mask_path is not None and Path(mask_path).is_file():
        mask, source = read_mask(mask_path), "reference"
        if mask.shape != original.shape:
            raise ValueError(
                f"{mask_path}: mask {mask.shape} and image {original.shape} differ in size"
            )
    else:
        mask, source = estimate_dense_mask(original, projection), "estimate"
    resized = resize(gray, size)
    network_region = resize(region.astype(np.float32), size) > 0.5
    return PreparedImage(
        record.path.name,
        projection,
        record.label,
        original,
        region,
        mask & region,
        source,
        resized,
        network_region,
    )


def prepare_test_images(test_root, masks_root, projection: str, size) -> list[PreparedImage]:
    """Every test image of one projection, each with its dense mask.

    ``test_root``/``masks_root`` as ``TestSet`` and ``DenseMasks/TestSet``; an image
    without a mask file gets an estimated one (``mask_source`` says which).
    """
    folder = projection_test_folder(test_root, projection)
    return [
        prepare_image(
            record,
            projection,
            size,
            dense_mask_path(masks_root, projection, record.label, record.path.name),
        )
        for record in list_class_images(folder, what=f"{projection} test")
    ]


def network_input(resized: np.ndarray) -> np.ndarray:
    """(S, S) gray in [0, 255] -> (1, S, S, 3) normalised network input."""
    return normalize(resized[None, :, :, None]).numpy()


def score_image(explainer, image: PreparedImage, methods, fidelity_steps: int = 20):
    """One row of ``explanation_scores.csv`` per method, and the maps (S, S) by method."""
    inputs = network_input(image.resized)
    probabilities = explainer.model.predict(inputs, verbose=0)[0]
    predicted = int(np.argmax(probabilities))
    rows, maps = [], {}
    for method in methods:
        cam = explainer.explain(method, inputs, [predicted])[0]
        maps[method] = cam
        scores = localisation_scores(
            to_image_size(cam, image.original.shape), image.mask, image.region, image.original
        )
        # the density map explains the density score, every other map the class
        target = DENSITY_SCORE_VALUES if method == "density_gradcam" else predicted
        curves = fidelity_curves(
            explainer.model, image.resized, cam, image.network_region, target, fidelity_steps
        )
        rows.append(
            {
                "image": image.name,
                "projection": image.projection,
                "method": method,
                **scores,
                "deletion_auc": curves.deletion_auc,
                "insertion_auc": curves.insertion_auc,
                "fidelity_of": "density score" if method == "density_gradcam" else "class",
                "true_label": image.true_label,
                "predicted_label": CLASSES[predicted],
                "mask_source": image.mask_source,
            }
        )
    return rows, maps


def robustness_image(explainer, image: PreparedImage, methods, seed: int = 0):
    """Rows of ``robustness.csv`` for one image, the reference maps, the maps after each change
    ((method, transformation) -> map) and the changed images (transformation -> (S, S) image),
    all brought back to the original frame so that they can be drawn under the maps.

    Every map, before and after the change, explains the class predicted on the
    unchanged image, so that only the image differs. Geometric changes are undone
    on the map before comparing; similarity is the Spearman rank correlation
    inside the breast (where the changed image still covers it) and the SSIM.
    """
    inputs = network_input(image.resized)
    predicted = int(np.argmax(explainer.model.predict(inputs, verbose=0)[0]))
    reference = {method: explainer.explain(method, inputs, [predicted])[0] for method in methods}
    rows, maps, changed_images = [], {}, {}
    size = image.resized.shape
    for number, transformation in enumerate(transformations(size)):
        rng = np.random.default_rng([seed, number])
        changed = transformation.apply(image.resized.copy(), rng)
        changed_images[transformation.name] = transformation.inverse(changed)
        changed_input = network_input(changed)
        kept = int(np.argmax(explainer.model.predict(changed_input, verbose=0)[0])) == predicted
        valid = transformation.valid(size) if transformation.valid else np.ones(size, bool)
        for method in methods:
            cam = transformation.inverse(explainer.explain(method, changed_input, [predicted])[0])
            maps[(method, transformation.name)] = cam
            rows.append(
                {
                    "image": image.name,
                    "method": method,
                    "transformation": transformation.name,
                    "prediction_kept": bool(kept),
                    "map_similarity": rank_correlation(
                        reference[method], cam, image.network_region & valid
                    ),
                    "map_ssim": map_ssim(reference[method] * valid, cam * valid),
                    "projection": image.projection,
                }
            )
    return rows, reference, maps, changed_images


def sanity_check(explainer, random_explainer, inputs, methods) -> list[dict]:
    """Model randomisation test (Adebayo et al., 2018), per method.

    The same images are explained by the trained model and by the same
    architecture with random weights; a method whose maps barely change
    (mean |Spearman| >= SANITY_THRESHOLD) explains the image, not the model.
    """
    classes = explainer.predicted_classes(inputs)
    rows = []
    for method in methods:
        trained = explainer.explain(method, inputs, classes)
        randomised = random_explainer.explain(method, inputs, classes)
        correlations = [rank_correlation(a, b) for a, b in zip(trained, randomised, strict=True)]
        mean = (
            float(np.nanmean(np.abs(correlations))) if np.isfinite(correlations).any() else np.nan
        )
        rows.append(
            {
                "method": method,
                "rank_correlation": mean,
                "passes": bool(np.isfinite(mean) and mean < SANITY_THRESHOLD),
                "images": len(inputs),
            }
        )
    return rows
