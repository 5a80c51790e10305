"""tools/realism.py: each feature checked on images with a known answer."""

import numpy as np
import pandas as pd
import pytest
import realism
from conftest import write_png

from breastdensity.data.phantoms import power_law_noise

SIZE = 128


def breast_image(texture: np.ndarray, mean: float = 120.0, scale: float = 30.0) -> np.ndarray:
    """A half-disc breast against the right edge, filled with a texture; background 0."""
    rows, cols = np.mgrid[0:SIZE, 0:SIZE]
    breast = (cols - SIZE) ** 2 + (rows - SIZE / 2) ** 2 < (0.95 * SIZE) ** 2
    image = np.clip(mean + scale * texture, 1, 255).astype(np.uint8)
    image[~breast] = 0
    return image


@pytest.mark.parametrize("beta", [2.0, 3.0])
def test_spectral_slope_recovers_the_exponent_of_power_law_noise(beta):
    field = power_law_noise((SIZE, SIZE), beta, np.random.default_rng(1))
    image = breast_image(field, scale=25.0)
    measured = realism.image_features(image)["beta"]
    assert measured == pytest.approx(beta, abs=0.35)


def test_coherence_high_for_stripes_low_for_isotropic_noise():
    rows, cols = np.mgrid[0:SIZE, 0:SIZE]
    stripes = breast_image(np.sin(2 * np.pi * rows / 9.0))
    noise = breast_image(power_law_noise((SIZE, SIZE), 2.0, np.random.default_rng(2)))
    assert realism.image_features(stripes)["coherence"] > 0.8
    assert realism.image_features(noise)["coherence"] < 0.6


def test_gray_level_features_and_bright_fraction():
    flat = breast_image(np.zeros((SIZE, SIZE)), mean=51.0)  # 51 / 255 = 0.2
    features = realism.image_features(flat)
    assert features["mean"] == pytest.approx(0.2, abs=1e-3)
    assert features["spread"] == pytest.approx(0.0, abs=1e-6)
    assert features["bright"] == 0.0 and features["edges"] == 0.0
    rows = np.mgrid[0:SIZE, 0:SIZE][0]
    grain = 0.05 * np.random.default_rng(4).standard_normal((SIZE, SIZE))  # not a flat fill
    half = breast_image(np.where(rows < SIZE // 2, 1.0, -1.0) + grain, 150.0, 60.0)
    assert realism.image_features(half)["bright"] == pytest.approx(0.5, abs=0.05)  # 210 > 191


def test_flat_pectoral_fill_is_left_out():
    image = breast_image(power_law_noise((SIZE, SIZE), 3.0, np.random.default_rng(3)))
    region_before = realism.breast_region(image)
    image[:40, -40:] = 77  # a flat fill in the upper chest-wall corner, as stage 0 leaves it
    region = realism.breast_region(image)
    assert not region[:36, -36:].any()
    assert region.sum() < region_before.sum()


@pytest.mark.slow
def test_cli_percentiles_auc_and_figures(tmp_path, rng):
    real, phantoms = tmp_path / "real", tmp_path / "phantoms"
    for index in range(4):
        texture = power_law_noise((SIZE, SIZE), 3.0, rng)
        write_png(real / "Unlabelled" / "CC_R" / f"r{index}_CC_R.png", breast_image(texture))
    for index in range(12):
        texture = power_law_noise((SIZE, SIZE), 2.0 + 0.1 * index, rng)
        image = breast_image(texture, mean=60 + 10 * index)
        write_png(phantoms / "TestSet" / "CC_R" / "test" / "A" / f"p{index}_A_CC_R.png", image)
        write_png(
            phantoms / "DenseMasks" / "TestSet" / "CC_R" / "test" / "A" / f"p{index}_A_CC_R.png",
            np.zeros((SIZE, SIZE), np.uint8),
        )
    out = tmp_path / "report"
    realism.main(
        [
            "--real",
            str(real),
            "--phantoms",
            f"demo={phantoms}",
            f"pooled={phantoms},{phantoms}",
            "--out",
            str(out),
            "--size",
            str(SIZE),
        ]
    )
    features = pd.read_csv(out / "features.csv")
    assert (features["source"] == "real").sum() == 4 and (features["source"] == "demo").sum() == 12
    assert (features["source"] == "pooled").sum() == 24  # two folders in one set
    percentiles = pd.read_csv(out / "percentiles.csv")
    assert (
        len(percentiles) == 4 * 2  # a row per real image and phantom set
        and percentiles[list(realism.FEATURES)].stack().between(0, 100).all()
    )
    summary = pd.read_csv(out / "summary.csv").set_index("phantoms").loc["demo"]
    assert 0.0 <= summary["loo_auc_real_vs_phantom"] <= 1.0
    assert summary["real_outside_5_95"] <= 4
    for name in ("realism_features.png", "realism_side_by_side.png", "realism_edges.png"):
        assert (out / name).stat().st_size > 10_000
