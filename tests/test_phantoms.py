import hashlib
import subprocess
import sys

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import MYPROJECT

from breastdensity.baseline import trivial_baseline
from breastdensity.conventions import CLASSES, PROJECTIONS, list_class_images, split_dir
from breastdensity.data.phantoms import (
    BIRADS_BANDS,
    PD_SAMPLING_BANDS,
    PREVALENCE,
    class_counts,
    generate_dataset,
    make_subject,
    plan_split,
    power_law_noise,
)
from breastdensity.preprocessing import read_mask


def density_class(percent_density: float) -> str:
    """The BI-RADS (4th edition) band of a percent density: the oracle of these tests."""
    return next(
        (c for c, (low, high) in BIRADS_BANDS.items() if low <= percent_density < high), "D"
    )


SIZE = (96, 80)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantoms")
    generate_dataset(out, (8, 4, 4), SIZE, seed=11, workers=1)
    return out


def digest(folder):
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow
def test_deterministic_for_a_seed_whatever_the_workers(dataset, tmp_path):
    generate_dataset(tmp_path / "again", (8, 4, 4), SIZE, seed=11, workers=2)
    assert digest(tmp_path / "again") == digest(dataset)
    generate_dataset(tmp_path / "other", (8, 4, 4), SIZE, seed=12, workers=1)
    assert digest(tmp_path / "other") != digest(dataset)


def test_layout_names_and_four_projections_per_subject(dataset):
    manifest = pd.read_csv(dataset / "manifest.csv", dtype={"subject": str})
    assert len(manifest) == 4 * 16
    for split, top, inner in [("train", "TrainingSet", "train"), ("test", "TestSet", "test")]:
        rows = manifest[manifest["split"] == split]
        for _, row in rows.iterrows():
            label, projection, subject = row["class"], row["projection"], row["subject"]
            expected = f"{top}/{projection}/{inner}/{label}/{subject}_{label}_{projection}.png"
            assert row["file"] == expected
            assert (dataset / row["file"]).is_file()
            assert row["mask"] == "DenseMasks/" + expected and (dataset / row["mask"]).is_file()
    per_subject = manifest.groupby("subject")
    assert (per_subject["projection"].apply(sorted) == [sorted(PROJECTIONS)] * 16).all()
    assert (per_subject["class"].nunique() == 1).all()
    # masks never inside the image folders
    assert not list((dataset / "TestSet").rglob("DenseMasks"))
    assert manifest["subject"].str.startswith(("tr", "va", "te")).all()


def test_percent_density_in_its_band_and_equal_to_the_mask(dataset):
    manifest = pd.read_csv(dataset / "manifest.csv")
    for _, row in manifest.iterrows():
        # inside the class band, and inside the sampling sub-band up to one pixel of rounding
        assert density_class(row["percent_density"]) == row["class"]
        low, high = PD_SAMPLING_BANDS[row["class"]]
        pixel = 100.0 / (0.3 * SIZE[0] * SIZE[1])
        assert low - pixel <= row["percent_density"] <= high + pixel
    row = manifest.iloc[0]
    image = cv2.imread(str(dataset / row["file"]), cv2.IMREAD_UNCHANGED)
    mask = read_mask(dataset / row["mask"])
    assert image.dtype == np.uint8 and image.ndim == 2
    assert mask[image > 0].sum() == mask.sum()  # mask inside the breast


def test_images_look_like_preprocessed_mammograms():
    entry = plan_split("test", 4, seed=3, prevalence="balanced", label_noise=0)[0]
    for phantom in make_subject(entry, 128, 100):
        image, projection = phantom.image, phantom.parameters.projection
        breast = image > 0
        assert (image[~breast] == 0).all()
        np.testing.assert_array_equal(breast, phantom.breast_mask | phantom.pectoral_mask)
        chest_wall, far_edge = (image[:, -1], image[:, 0])
        if projection.endswith("_L"):
            chest_wall, far_edge = far_edge, chest_wall
        assert (chest_wall > 0).mean() > 0.5, projection  # chest wall on the image edge
        assert (far_edge > 0).sum() == 0, projection  # nipple does not touch the far edge
        assert not (phantom.dense_mask & ~phantom.breast_mask).any()  # inside, no pectoral
        if projection.startswith("MLO"):
            pectoral = phantom.pectoral_mask
            assert pectoral.sum() > 0.02 * breast.sum()
            values = np.unique(image[pectoral])
            assert len(values) == 1  # uniformly filled ...
            assert abs(int(values[0]) - image[phantom.breast_mask].mean()) <= 0.5 + 1e-9
            top_corner = (0, -1) if projection.endswith("_R") else (0, 0)
            assert pectoral[top_corner]  # ... in the upper chest-wall corner
        else:
            assert not phantom.pectoral_mask.any()


def test_prevalence_and_class_counts():
    assert class_counts(100, "screening") == {"A": 10, "B": 40, "C": 40, "D": 10}
    assert class_counts(6, "balanced") == {"A": 2, "B": 2, "C": 1, "D": 1}
    plan = plan_split("train", 20, seed=1, prevalence="screening", label_noise=0)
    assert sorted(entry["label"] for entry in plan) == sorted("A" * 2 + "B" * 8 + "C" * 8 + "D" * 2)


def test_label_noise_makes_neighbouring_classes_overlap():
    plan = plan_split("train", 400, seed=1, prevalence="balanced", label_noise=8.0)
    disagree = [e for e in plan if density_class(e["subject_pd"]) != e["label"]]
    assert 0.05 < len(disagree) / len(plan) < 0.6
    assert all(
        abs(CLASSES.index(density_class(e["subject_pd"])) - CLASSES.index(e["label"])) <= 2
        for e in plan
    )
    clean = plan_split("train", 400, seed=1, prevalence="balanced", label_noise=0.0)
    assert all(density_class(e["subject_pd"]) == e["label"] for e in clean)
    assert BIRADS_BANDS["B"] == (25.0, 50.0)


def test_power_law_spectrum_slope():
    rng = np.random.default_rng(0)
    field = power_law_noise((256, 256), 3.0, rng)
    power = np.abs(np.fft.fft2(field)) ** 2
    frequency = np.hypot(*np.meshgrid(np.fft.fftfreq(256), np.fft.fftfreq(256)))
    band = (frequency > 0.02) & (frequency < 0.3)
    slope = np.polyfit(np.log(frequency[band]), np.log(power[band]), 1)[0]
    assert slope == pytest.approx(-3.0, abs=0.15)


def test_refuses_to_overwrite(dataset):
    with pytest.raises(FileExistsError, match="--overwrite"):
        generate_dataset(dataset, (1, 0, 0), SIZE, seed=11)


def test_tiny_dataset_loads_through_the_split_loader(dataset):
    records = list_class_images(split_dir(dataset, "train", "CC_R"))
    assert len(records) == 8
    assert [r.label for r in records] == sorted(r.label for r in records)
    assert {r.label for r in records} == set(CLASSES)


def test_cli_and_preview(tmp_path, capsys):
    import Make_Phantoms

    status = Make_Phantoms.main(
        [
            "--out",
            str(tmp_path / "d"),
            "--subjects",
            "0",
            "0",
            "4",
            "--size",
            "64",
            "64",
            "--seed",
            "5",
            "--workers",
            "1",
            "--prevalence",
            "screening",
            "--preview",
            str(tmp_path / "grid.png"),
        ]
    )
    assert status == 0
    assert "16 images" in capsys.readouterr().out
    assert (tmp_path / "grid.png").stat().st_size > 10_000
    assert not (tmp_path / "d" / "TrainingSet").exists()  # 0 subjects skip a split
    assert (
        Make_Phantoms.main(
            ["--out", str(tmp_path / "d"), "--subjects", "0", "0", "1", "--seed", "5"]
        )
        == 2
    )  # refuses to overwrite


def test_cli_offers_every_prevalence():
    import Make_Phantoms

    assert set(Make_Phantoms.PREVALENCES) == set(PREVALENCE)


def test_generating_phantoms_loads_no_tensorflow():
    # Make_Phantoms.py and its worker processes start fast and quiet: no module of the
    # generator (maths, dataset writing, preview, raw DICOMs) imports TensorFlow.
    modules = ("phantom_model", "phantoms", "phantom_plots", "raw_phantoms")
    code = "; ".join(
        ["import sys", *(f"import breastdensity.data.{name}" for name in modules)]
        + ["sys.exit('tensorflow' in sys.modules)"]
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=MYPROJECT, timeout=120)
    assert result.returncode == 0, "a generator module loads TensorFlow"


def test_trivial_baseline_runs_on_a_generated_set(dataset):
    result = trivial_baseline(dataset)
    assert (result["train_images"], result["test_images"], result["test_subjects"]) == (32, 16, 4)


def test_trivial_baseline_finds_a_class_given_away_by_brightness(tmp_path):
    """Known answer: when the mean gray is the class, the baseline must be perfect."""
    rows = []
    for split, subjects in (("train", 3), ("test", 2)):
        for label_index, label in enumerate(CLASSES):
            for number in range(subjects):
                subject = f"{split}{label}{number}"
                for projection in PROJECTIONS:
                    file = split_dir(".", split, projection) / label / f"{subject}.png"
                    gray = 40 + 50 * label_index + number  # brightness encodes the class
                    cv2.imwrite(str(_mkdir(tmp_path / file)), np.full((40, 30), gray, np.uint8))
                    rows.append(
                        {
                            "file": file.as_posix(),
                            "subject": subject,
                            "split": split,
                            "class": label,
                            "projection": projection,
                        }
                    )
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    result = trivial_baseline(tmp_path)
    assert result["test_subjects"] == 8
    for key in ("image_accuracy", "subject_accuracy", "subject_kappa_linear"):
        assert result[key] == 1.0, key


def _mkdir(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
