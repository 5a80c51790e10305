"""Explanation scores on hand-made maps and masks with known answers."""

import numpy as np
import pytest
from conftest import corner_model
from scipy.ndimage import maximum_filter, minimum_filter

from breastdensity.conventions import (
    CLASSES,
    DENSE_MASKS,
    dense_mask_path,
    list_class_images,
    projection_test_folder,
)
from breastdensity.data.phantoms import generate_dataset, make_subject, plan_split
from breastdensity.explain.scoring import (
    best_dice,
    estimate_dense_mask,
    fidelity_curves,
    pectoral_region,
    percent_density,
    pointing_game,
    prepare_test_images,
    rank_correlation,
    relevance_mass,
    roc_auc,
    scoring_region,
    transformations,
)
from breastdensity.preprocessing import read_mask


@pytest.fixture
def square():
    mask = np.zeros((40, 40), bool)
    mask[10:20, 10:30] = True
    region = np.ones((40, 40), bool)
    region[:, :4] = False  # e.g. background
    return mask, region


def test_perfect_inverted_and_random_maps(square, rng):
    mask, region = square
    perfect = mask.astype(float)
    assert roc_auc(perfect, mask, region) == 1.0
    assert pointing_game(perfect, mask, region) == 1.0
    assert relevance_mass(perfect, mask, region) == 1.0
    assert best_dice(perfect, mask, region) == pytest.approx(1.0)
    inverted = 1.0 - perfect
    assert roc_auc(inverted, mask, region) == 0.0
    assert pointing_game(inverted, mask, region) == 0.0
    assert relevance_mass(inverted, mask, region) == 0.0
    random_aucs = [roc_auc(rng.random((40, 40)), mask, region) for _ in range(20)]
    assert np.mean(random_aucs) == pytest.approx(0.5, abs=0.03)
    # a map peaking outside the region is not rewarded: the maximum is sought inside
    outside = perfect * 0.5
    outside[:, :4] = 1.0
    assert pointing_game(outside, mask, region) == 1.0
    assert np.isnan(roc_auc(perfect, np.zeros_like(mask), region))


def test_fidelity_curves_on_a_toy_model():
    # class 1 probability grows with the mean brightness of the top-left quarter
    model = corner_model(4.0)
    gray = np.full((32, 32), 60.0, np.float32)
    gray[:16, :16] = 220.0
    region = np.ones((32, 32), bool)
    good = np.zeros((32, 32))
    good[:16, :16] = 1.0
    curves = fidelity_curves(model, gray, good, region, target=1, steps=8)
    assert curves.deletion[0] == pytest.approx(curves.insertion[-1], abs=1e-5)  # both: the image
    assert curves.deletion[-1] == pytest.approx(curves.insertion[0], abs=1e-5)  # both: blank
    assert curves.deletion[0] > curves.deletion[2]  # removing the bright corner first hurts
    bad = 1.0 - good
    worse = fidelity_curves(model, gray, bad, region, target=1, steps=8)
    assert curves.deletion_auc < worse.deletion_auc
    assert curves.insertion_auc > worse.insertion_auc
    # class values instead of a class: their expectation is tracked (the density
    # score); values (0, 1) give class 1's probability, (0.5, 0.5) a constant
    expected = fidelity_curves(model, gray, good, region, target=[0.0, 1.0], steps=8)
    np.testing.assert_allclose(expected.deletion, curves.deletion, atol=1e-6)
    flat = fidelity_curves(model, gray, good, region, target=[0.5, 0.5], steps=8)
    np.testing.assert_allclose(flat.deletion, 0.5, atol=1e-6)


def test_rank_correlation():
    a = np.arange(16.0).reshape(4, 4)
    assert rank_correlation(a, a * 2 + 1) == pytest.approx(1.0)
    assert rank_correlation(a, -a) == pytest.approx(-1.0)
    assert np.isnan(rank_correlation(a, np.zeros_like(a)))


def test_geometric_transformations_are_undone(rng):
    size = (64, 64)
    image = np.zeros(size, np.float32)
    image[20:44, 10:30] = 200
    for transformation in transformations(size):
        changed = transformation.apply(image, rng)
        assert changed.shape == size and changed.min() >= 0 and changed.max() <= 255
        if transformation.undo is None:
            continue
        back = transformation.inverse(changed)
        valid = transformation.valid(size) if transformation.valid else np.ones(size, bool)
        assert valid.mean() > 0.6
        # away from edges (bilinear interpolation blurs them by a pixel or two)
        flat = maximum_filter(image, 5) == minimum_filter(image, 5)
        inner = valid & flat
        assert np.abs(back - image)[inner].max() < 1.0, transformation.name
    names = [t.name for t in transformations(size)]
    assert names == [
        "log",
        "gaussian_noise",
        "speckle_noise",
        "black_rectangle",
        "affine",
        "rotate_180",
    ]


def test_region_and_model_free_density_on_phantoms():
    # one subject per class (A-D); the estimate is a two-class Otsu split, so on
    # realistic phantoms it over-segments fatty breasts (ligaments, texture) but
    # must still find dense tissue where there is much of it and rank the classes
    estimated_pd, dense_dice = {}, []
    for entry in plan_split("test", 4, seed=2, prevalence="balanced", label_noise=0):
        views = []
        for phantom in make_subject(entry, 160, 128):
            projection = phantom.parameters.projection
            # a few noisy breast pixels next to the muscle can share its gray value
            tolerance = 0.01 * max(phantom.pectoral_mask.sum(), 100)
            for found in (
                pectoral_region(phantom.image, projection),
                pectoral_region(phantom.image),
            ):
                assert (found != phantom.pectoral_mask).sum() <= tolerance, projection
            region = scoring_region(phantom.image, projection)
            assert (region != phantom.breast_mask).sum() <= tolerance
            estimate = estimate_dense_mask(phantom.image, projection)
            truth = phantom.dense_mask
            if entry["label"] in ("C", "D"):
                dense_dice.append(2 * (estimate & truth).sum() / (estimate.sum() + truth.sum()))
            views.append(percent_density(estimate, phantom.breast_mask))
        estimated_pd[entry["label"]] = np.mean(views)
    assert sorted(estimated_pd, key=estimated_pd.get) == list(CLASSES)
    # textured fat and dense tissue that is not burnt out make a global threshold
    # imperfect: as on real images, the estimate is no segmentation
    assert np.mean(dense_dice) > 0.7


def test_prepare_test_images_reads_each_mask_and_estimates_a_missing_one(tmp_path):
    # 4 test subjects, one per class; one mask file removed
    generate_dataset(tmp_path, (0, 0, 4), (96, 80), seed=5)
    masks_root = tmp_path / DENSE_MASKS / "TestSet"
    records = list_class_images(projection_test_folder(tmp_path / "TestSet", "CC_R"))
    removed = dense_mask_path(masks_root, "CC_R", records[1].label, records[1].path.name)
    removed.unlink()

    images = prepare_test_images(tmp_path / "TestSet", masks_root, "CC_R", (64, 64))

    assert [i.name for i in images] == [r.path.name for r in records]  # order kept
    assert [i.mask_source for i in images] == ["reference", "estimate", "reference", "reference"]
    first = images[0]
    truth = read_mask(dense_mask_path(masks_root, "CC_R", records[0].label, records[0].path.name))
    assert np.array_equal(first.mask, truth & first.region)
    assert first.resized.shape == (64, 64) and first.network_region.shape == (64, 64)
