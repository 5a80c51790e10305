"""Stage 0 on scanned films as public datasets publish them: mini-MIAS (PGM, Info.txt) and JPEG."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import Preprocess_Mammograms
import pytest
from conftest import synthetic_film

from breastdensity.data.label_tables import MIAS_DENSITY

# MIAS' Info.txt, abridged: free text, then one line per image and abnormality.
INFO_TXT = """\
              MAMMOGRAPHIC IMAGE ANALYSIS SOCIETY
                  MiniMammographic Database

Feel free to use the database in any of your scientific research.
1st column: MIAS database reference number.
2nd column: Character of background tissue:
                F - Fatty
                G - Fatty-glandular
                D - Dense-glandular
mdb001 G CIRC B 535 425 197
mdb002 G CIRC B 522 280 69
mdb003 D NORM
mdb004 D NORM
mdb005 F CALC B 500 160 20
mdb005 F CALC M 300 600 40
mdb006 F CALC B
=================================================================
"""


@pytest.fixture(scope="module")
def mias_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("mias")
    (root / "Info.txt").write_text(INFO_TXT, encoding="latin-1")
    masks = {}
    for number in range(1, 7):
        image, mask = synthetic_film(number, right=number % 2 == 1)
        cv2.imwrite(str(root / f"mdb{number:03d}.pgm"), image)
        masks[f"mdb{number:03d}.pgm"] = mask
    return root, masks


def test_mias_as_published_goes_through_stage0(mias_folder, tmp_path):
    root, masks = mias_folder
    out = tmp_path / "out"
    # --labels-file defaults to INPUT/Info.txt
    assert (
        Preprocess_Mammograms.main(["--input", str(root), "--out", str(out), "--labels", "mias"])
        == 0
    )
    manifest = pd.read_csv(out / "manifest.csv", dtype={"source_density": str})
    assert len(manifest) == 6  # mdb005's two lesion lines: one image
    assert sorted(manifest["subject"].unique()) == ["mias001", "mias002", "mias003"]
    assert manifest.groupby("subject")["split"].nunique().max() == 1  # a woman in one split
    for row in manifest.to_dict("records"):
        number = int(Path(row["source"]).stem[3:])
        assert row["projection"] == ("MLO_R" if number % 2 else "MLO_L")
        level = {1: "G", 2: "G", 3: "D", 4: "D", 5: "F", 6: "F"}[number]
        assert row["source_density"] == level
        assert row["class"] == MIAS_DENSITY[level]
        assert not row["mirrored"]  # MIAS stores both sides in the reference orientation
        # The breast, not the film: padding, film background and label are left out.
        truth = masks[Path(row["source"]).name]
        assert row["width"] == pytest.approx(np.flatnonzero(truth.any(axis=0)).size, abs=4)
        assert row["breast_area_px"] == pytest.approx(truth.sum(), rel=0.05)


def test_jpeg_input_is_read_like_png(mias_folder, tmp_path):
    root, _ = mias_folder
    source = tmp_path / "exam"
    source.mkdir()
    for film, name in (("mdb001.pgm", "R-MLO.jpg"), ("mdb003.pgm", "R-CC.jpeg")):
        image = cv2.imread(str(root / film), cv2.IMREAD_UNCHANGED)
        assert cv2.imwrite(str(source / name), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert Preprocess_Mammograms.main(["--input", str(source), "--out", str(tmp_path / "out")]) == 0
    manifest = pd.read_csv(tmp_path / "out" / "manifest.csv")
    assert sorted(manifest["projection"]) == ["CC_R", "MLO_R"]
    assert sorted(Path(f).name for f in manifest["file"]) == ["exam_CC_R.png", "exam_MLO_R.png"]


def test_qa_sheets_show_every_image(mias_folder, tmp_path, monkeypatch):
    root, _ = mias_folder
    monkeypatch.setattr(Preprocess_Mammograms, "QA_MAX_IMAGES", 4)
    qa = tmp_path / "qa.png"
    arguments = ["--input", str(root), "--out", str(tmp_path / "out"), "--labels", "mias"]
    assert Preprocess_Mammograms.main([*arguments, "--qa", str(qa)]) == 0
    assert qa.is_file() and (tmp_path / "qa-2.png").is_file()  # 6 images, 4 per sheet
    assert not (tmp_path / "qa-3.png").exists()


SHARED_MIAS = Path(__file__).resolve().parents[2] / "shared" / "real-labelled" / "mias-train"


@pytest.mark.slow
@pytest.mark.skipif(
    not (SHARED_MIAS / "Info.txt").is_file(),
    reason=f"the team's mini-MIAS copy is not at {SHARED_MIAS} (a clone has none)",
)
def test_real_mias_films_are_segmented_and_oriented(tmp_path):
    """On the real films: MIAS stores every film with its chest wall on the side its number
    says, so a film stage 0 mirrors is a segmentation that took film for breast."""
    out = tmp_path / "out"
    arguments = ["--input", str(SHARED_MIAS), "--out", str(out), "--labels", "mias"]
    assert Preprocess_Mammograms.main([*arguments, "--split", "1", "0", "0", "--workers", "2"]) == 0
    manifest = pd.read_csv(out / "manifest.csv")
    assert len(manifest) == 216
    # two films (mdb151/152: a breast wider than the film) touch both edges alike
    assert manifest["mirrored"].sum() <= 2
    assert manifest["pectoral_found"].mean() > 0.9
    assert (manifest["breast_area_px"] / (manifest["height"] * manifest["width"])).max() < 0.98
