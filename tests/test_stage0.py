"""Stage 0 (Preprocess_Mammograms.py, breastdensity.data.mammograms): ground truth, real images, layout."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import Make_Phantoms
import numpy as np
import pandas as pd
import Preprocess_Mammograms
import pydicom
import pytest
from conftest import MYPROJECT, cbis_exam, write_png

from breastdensity.conventions import PROJECTIONS, parse_image_name
from breastdensity.data.mammograms import (
    dice,
    preprocess,
    quantise,
    read_mammogram,
    to_output_frame,
)
from breastdensity.data.raw_phantoms import VOI_MODES, make_raw_phantom

SEED = 3


def _crop_to_content(image: np.ndarray) -> np.ndarray:
    rows, columns = np.flatnonzero(image.any(axis=1)), np.flatnonzero(image.any(axis=0))
    return image[rows[0] : rows[-1] + 1, columns[0] : columns[-1] + 1]


def _save(raw, folder: Path) -> Path:
    path = folder / f"{raw.name}.dcm"
    raw.dataset.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def raw_results(tmp_path_factory):
    """12 raw phantoms (3 subjects x 4 projections; every VOI mode, both photometrics)
    through stage 0, with their truth."""
    folder = tmp_path_factory.mktemp("raw")
    results = []
    for index in range(12):
        raw = make_raw_phantom(SEED, index, (320, 256))
        result = preprocess(read_mammogram(_save(raw, folder)), pectoral="mean")
        results.append((raw, result))
    return results


def test_raw_phantoms_cover_the_cases(raw_results):
    descriptions = pd.DataFrame([raw.description for raw, _ in raw_results])
    assert set(descriptions["voi_mode"]) == set(VOI_MODES)
    assert set(descriptions["photometric"]) == {"MONOCHROME1", "MONOCHROME2"}
    assert descriptions["orientation"].nunique() >= 3
    assert descriptions["laterality_tag"].nunique() == 2
    assert descriptions["view_tag"].nunique() == 3


def test_breast_and_pectoral_dice_and_orientation_on_raw_phantoms(raw_results):
    for raw, result in raw_results:
        assert result.projection == raw.projection, raw.name  # laterality and view right
        true_breast = to_output_frame(raw.breast_mask, result.geometry).astype(bool)
        true_pectoral = to_output_frame(raw.pectoral_mask, result.geometry).astype(bool)
        assert dice(result.breast_mask, true_breast) >= 0.97, raw.name
        if raw.projection.startswith("MLO"):
            assert dice(result.pectoral_mask, true_pectoral) >= 0.85, raw.name
        else:
            assert not result.pectoral_mask.any(), raw.name
        # reference orientation: the chest wall (the breast's longest contact with a
        # vertical edge) is on the right for right breasts, on the left for left ones
        left, right = true_breast[:, :3].sum(), true_breast[:, -3:].sum()
        assert (right > left) == raw.projection.endswith("_R"), raw.name


def test_output_background_zero_breast_nonzero_and_muscle_filled_with_the_mean(raw_results):
    for raw, result in raw_results:
        image, breast, muscle = result.image, result.breast_mask, result.pectoral_mask
        assert result.decisions["breast_area_px"] == breast.sum(), raw.name
        assert not image[~breast].any(), raw.name  # background exactly 0
        assert image[breast].min() >= 1.0 / 255.0 - 1e-7 and image.max() <= 1.0, raw.name
        if muscle.any():  # one gray: the mean of the rest of the breast
            np.testing.assert_allclose(image[muscle], image[breast & ~muscle].mean(), rtol=1e-5)


@pytest.mark.parametrize("seed, index", [(2, 10), (3, 20), (0, 14), (3, 14)])
def test_fatty_breast_whose_fat_outnumbers_the_background_is_found_whole(seed, index, tmp_path):
    # Large areas of mid-gray fat once became the "background" level, and the
    # breast mask shrank to the dense tissue (Dice 0.79-0.81 for the first three).
    # (3, 14): a FOR PROCESSING raw whose fat is displayed nearly black; before the
    # raw form gave the breast its own attenuation, its fat sat at the direct
    # exposure's level and the mask lost it (Dice 0.83).
    raw = make_raw_phantom(seed, index, (320, 256))
    result = preprocess(read_mammogram(_save(raw, tmp_path)))
    true_breast = to_output_frame(raw.breast_mask, result.geometry).astype(bool)
    assert dice(result.breast_mask, true_breast) >= 0.97


def test_raw_phantoms_come_out_close_to_the_generator_preprocessed_form(raw_results):
    for raw, result in raw_results:
        output = quantise(result.image, 8)
        reference = _crop_to_content(raw.reference)
        reference = cv2.resize(reference, output.shape[::-1], interpolation=cv2.INTER_NEAREST)
        inside = (output > 0) & (reference > 0) & ~result.pectoral_mask
        correlation = np.corrcoef(output[inside].astype(float), reference[inside].astype(float))
        assert correlation[0, 1] > 0.93, raw.name
        if raw.description["voi_mode"] != "FOR_PROCESSING":  # window given: same gray levels
            assert np.abs(output[inside].astype(float) - reference[inside]).mean() < 5, raw.name
        assert (output[~result.breast_mask] == 0).all()  # markers and labels gone


def test_sigmoid_window_follows_the_dicom_formula(tmp_path):
    index = VOI_MODES.index("SIGMOID")  # MONOCHROME2 (index < len(VOI_MODES))
    raw = make_raw_phantom(SEED, index, (160, 128))
    dataset = raw.dataset
    assert (
        dataset.VOILUTFunction == "SIGMOID" and dataset.PhotometricInterpretation == "MONOCHROME2"
    )
    mammogram = read_mammogram(_save(raw, tmp_path))
    stored = np.frombuffer(dataset.PixelData, np.uint16).reshape(dataset.Rows, dataset.Columns)
    centre, width = float(dataset.WindowCenter), float(dataset.WindowWidth)
    expected = 1.0 / (1.0 + np.exp(-4.0 * (stored - centre) / width))  # PS3.3 C.11.2.1.3.1
    if mammogram.fov_flipped:  # the reader undoes FieldOfViewHorizontalFlip
        expected = expected[:, ::-1]
    np.testing.assert_allclose(mammogram.pixels, expected, atol=2e-3)
    assert mammogram.voi == "window SIGMOID" and not mammogram.inverted


def test_monochrome1_is_inverted_after_voi(tmp_path):
    index = len(VOI_MODES)  # LINEAR, MONOCHROME1
    raw = make_raw_phantom(SEED, index, (160, 128))
    assert raw.dataset.PhotometricInterpretation == "MONOCHROME1"
    mammogram = read_mammogram(_save(raw, tmp_path))
    assert mammogram.inverted
    # the breast is brighter than the background after inversion
    breast = raw.breast_mask
    assert mammogram.pixels[breast].mean() > mammogram.pixels[~breast].mean() + 0.2


@pytest.fixture(scope="module")
def cbis_files():
    return cbis_exam()  # rcc, lcc, rmlo, lmlo of one patient


@pytest.mark.parametrize("view", ["rcc", "lmlo"])
def test_real_cbis_ddsm_dicom(cbis_files, view):
    """A real RLE-compressed 16-bit film scan: tags read, breast found, label gone."""
    path = cbis_files[view]
    dataset = pydicom.dcmread(path, stop_before_pixels=True)
    assert dataset.file_meta.TransferSyntaxUID.name == "RLE Lossless"
    result = preprocess(read_mammogram(path), max_height=1024)
    expected = {"rcc": "CC_R", "lmlo": "MLO_L"}[view]
    assert result.projection == expected
    assert result.decisions["laterality_source"] == "Laterality"
    assert result.decisions["view_source"] == "PatientOrientation"
    assert result.decisions["voi"] == "percentile window in the breast"
    assert result.image.shape[0] == 1024
    breast = result.breast_mask
    assert 0.3 < breast.mean() < 0.95
    count, _ = cv2.connectedComponents(breast.astype(np.uint8))
    assert count == 2  # one breast, no label or film border pieces
    left, right = breast[:, :5].sum(), breast[:, -5:].sum()
    assert (right > left) == expected.endswith("_R")
    assert (result.image[~breast] == 0).all()
    if expected.startswith("MLO"):
        assert result.decisions["pectoral_found"]


def _mirrored_copy(source: Path, target: Path) -> None:
    """The DICOM with its pixels left-right flipped (stored uncompressed), its tags unchanged."""
    dataset = pydicom.dcmread(source)
    flipped = np.ascontiguousarray(dataset.pixel_array[:, ::-1])
    dataset.set_pixel_data(flipped, dataset.PhotometricInterpretation, int(dataset.BitsStored))
    dataset.save_as(target, enforce_file_format=True)


def _bright_pieces(path: Path) -> int:
    """Pieces of 50 px or more above Otsu's threshold in the DICOM at 1/8 scale: breast, film label."""
    pixels = pydicom.dcmread(path).pixel_array.astype(np.float32)
    small = cv2.resize(pixels, (pixels.shape[1] // 8, pixels.shape[0] // 8), cv2.INTER_AREA)
    gray = cv2.convertScaleAbs(small, alpha=255.0 / small.max())
    _, foreground = cv2.threshold(gray, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    _, _, stats, _ = cv2.connectedComponentsWithStats(foreground)
    return int((stats[1:, cv2.CC_STAT_AREA] >= 50).sum())


def test_real_dicoms_unlabelled_come_out_in_the_reference_orientation(cbis_files, tmp_path):
    """One real exam (4 CBIS-DDSM films with burned-in labels), its right views stored mirrored:
    those flipped back, labels gone, projections from the tags, the subject from PatientID."""
    source = tmp_path / "exam"
    source.mkdir()
    views = {path.name: view for view, path in cbis_files.items()}
    for view, path in cbis_files.items():
        if view.startswith("r"):  # as a viewer that shows every breast facing right stores them
            _mirrored_copy(path, source / path.name)
        else:
            shutil.copy(path, source / path.name)
    out = tmp_path / "out"
    assert (
        Preprocess_Mammograms.main(
            ["--input", str(source), "--out", str(out), "--max-height", "800"]
        )
        == 0
    )
    manifest = pd.read_csv(out / "manifest.csv")
    assert sorted(manifest["projection"]) == sorted(PROJECTIONS)
    for row in manifest.itertuples():
        view = views[Path(row.source).name]  # rcc, lmlo ... as the package names them
        side, name = view[0].upper(), view[1:].upper()
        assert row.projection == f"{name}_{side}"
        assert row.laterality_source == "Laterality" and row.view_source == "PatientOrientation"
        assert row.mirrored == (side == "R")  # only the mirrored copies are flipped
        # PatientID "Mass-Test_P_00173_LEFT_CC": the side and view words are not the subject
        assert row.subject == "Mass-Test_P_00173"
        assert row.file == f"Unlabelled/{row.projection}/Mass-Test_P_00173_{row.projection}.png"
        image = cv2.imread(str(out / row.file), cv2.IMREAD_GRAYSCALE)
        breast = cv2.imread(str(out / row.breast_mask), cv2.IMREAD_GRAYSCALE) > 0
        assert _bright_pieces(Path(row.source)) >= 3  # the breast and the film's label letters
        assert (image[~breast] == 0).all()  # the label is gone ...
        count, _ = cv2.connectedComponents(breast.astype(np.uint8))
        assert count == 2  # ... and so is every other piece but the breast
        left, right = breast[:, :5].sum(), breast[:, -5:].sum()
        assert (right > left) == (side == "R")
        assert row.pectoral_found == (name == "MLO")
        if row.mirrored:  # flipped back, the view is the one stage 0 makes of the original
            original = preprocess(read_mammogram(cbis_files[view]), max_height=800)
            assert original.image.shape == image.shape and not original.decisions["mirrored"]
            assert dice(breast, original.breast_mask) > 0.99
            difference = np.abs(image.astype(np.float32) - quantise(original.image, 8))
            assert difference.mean() < 8  # gray levels of 255


def _all_to_test_split(source: Path, out: Path) -> int:
    """Stage 0 on a labelled folder tree, every image into the test split."""
    arguments = ["--input", str(source), "--out", str(out), "--labels", "folder"]
    return Preprocess_Mammograms.main([*arguments, "--split", "0", "0", "1"])


def test_shipped_testset_goes_through_unchanged(tmp_path):
    """Idempotence: images already in the reference form keep orientation and content."""
    source = tmp_path / "TestSet"
    for projection in PROJECTIONS:
        for path in sorted((MYPROJECT / "TestSet" / projection / "test").glob("*/*.png"))[:2]:
            target = source / path.relative_to(MYPROJECT / "TestSet")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, target)
    out = tmp_path / "out"
    assert _all_to_test_split(source, out) == 0
    manifest = pd.read_csv(out / "manifest.csv", dtype={"subject": str})
    assert len(manifest) == 8 and (manifest["split"] == "test").all()
    assert not manifest["mirrored"].any() and not manifest["pectoral_found"].any()
    for row in manifest.itertuples():
        original = cv2.imread(row.source, cv2.IMREAD_GRAYSCALE)
        output = cv2.imread(str(out / row.file), cv2.IMREAD_GRAYSCALE)
        np.testing.assert_array_equal(output, _crop_to_content(original))
        name = parse_image_name(row.file)
        assert (name.subject, name.projection) == (
            parse_image_name(row.source).subject,
            row.projection,
        )
        assert row.file.startswith(f"TestSet/{row.projection}/test/{name.label}/")
    # and once more: a fixed point
    again = tmp_path / "again"
    assert _all_to_test_split(out / "TestSet", again) == 0
    for row in manifest.itertuples():
        np.testing.assert_array_equal(
            cv2.imread(str(again / row.file), cv2.IMREAD_UNCHANGED),
            cv2.imread(str(out / row.file), cv2.IMREAD_UNCHANGED),
        )


# ----------------------------------------------------------------------------
# The script: layout, options, splits
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def raw_folder(tmp_path_factory):
    """16 small raw DICOMs (4 subjects) and their labels in the csv format (Make_Phantoms.py --raw)."""
    root = tmp_path_factory.mktemp("rawset")
    assert (
        Make_Phantoms.main(
            [
                "--raw",
                "--out",
                str(root),
                "--subjects",
                "4",
                "0",
                "0",
                "--size",
                "160",
                "128",
                "--seed",
                str(SEED),
            ]
        )
        == 0
    )
    assert len(list((root / "RawDICOM").glob("*.dcm"))) == 16
    truth = pd.read_csv(root / "raw_manifest.csv")
    assert sorted(truth["projection"].unique()) == sorted(PROJECTIONS)
    return root


def run_stage0(raw_folder, out, *extra):
    return Preprocess_Mammograms.main(
        [
            "--input",
            str(raw_folder / "RawDICOM"),
            "--out",
            str(out),
            "--labels",
            "csv",
            "--labels-file",
            str(raw_folder / "raw_labels.csv"),
            *extra,
        ]
    )


def test_labelled_run_writes_the_reference_layout(raw_folder, tmp_path):
    out = tmp_path / "out"
    qa = tmp_path / "qa.png"
    assert run_stage0(raw_folder, out, "--split", "0.5", "0.25", "0.25", "--qa", str(qa)) == 0
    manifest = pd.read_csv(out / "manifest.csv")
    assert len(manifest) == 16
    assert manifest.groupby("subject")["split"].nunique().max() == 1  # no subject in two splits
    assert sorted(manifest["split"].unique()) == ["test", "train", "validation"]
    truth = pd.read_csv(raw_folder / "raw_manifest.csv")
    assert sorted(manifest["projection"]) == sorted(truth["projection"])
    for row in manifest.itertuples():
        top = {"train": "TrainingSet", "validation": "ValidationSet", "test": "TestSet"}[row.split]
        assert row.file.startswith(f"{top}/{row.projection}/")
        image = cv2.imread(str(out / row.file), cv2.IMREAD_UNCHANGED)
        assert image.dtype == np.uint8 and image.max() > 0
        for mask in (row.breast_mask, row.pectoral_mask):
            assert cv2.imread(str(out / mask), cv2.IMREAD_GRAYSCALE).shape == image.shape
    for column in (
        "laterality_source",
        "view_source",
        "voi",
        "inverted",
        "mirrored",
        "pectoral_found",
        "breast_area_px",
    ):
        assert manifest[column].notna().all(), column
    sheet = cv2.imread(str(qa))
    assert sheet is not None and sheet.shape[0] > 300


def test_options_bits_height_pectoral_and_workers(raw_folder, tmp_path):
    base = tmp_path / "base"
    assert run_stage0(raw_folder, base, "--seed", "1") == 0
    parallel = tmp_path / "parallel"
    assert run_stage0(raw_folder, parallel, "--seed", "1", "--workers", "2") == 0
    first = pd.read_csv(base / "manifest.csv")
    pd.testing.assert_frame_equal(first, pd.read_csv(parallel / "manifest.csv"))
    for name in first["file"]:
        np.testing.assert_array_equal(
            cv2.imread(str(base / name), cv2.IMREAD_UNCHANGED),
            cv2.imread(str(parallel / name), cv2.IMREAD_UNCHANGED),
        )
    options = tmp_path / "options"
    assert (
        run_stage0(
            raw_folder,
            options,
            "--seed",
            "1",
            "--bits",
            "16",
            "--max-height",
            "100",
            "--pectoral",
            "keep",
        )
        == 0
    )
    second = pd.read_csv(options / "manifest.csv")
    for row_mean, row_keep in zip(first.itertuples(), second.itertuples(), strict=True):
        image = cv2.imread(str(options / row_keep.file), cv2.IMREAD_UNCHANGED)
        assert image.dtype == np.uint16 and image.shape[0] <= 100
        if row_keep.pectoral_found:
            pectoral = cv2.imread(str(options / row_keep.pectoral_mask), 0) > 0
            breast = cv2.imread(str(options / row_keep.breast_mask), 0) > 0
            # kept muscle is brighter than the rest of the breast
            assert image[pectoral].mean() > image[breast & ~pectoral].mean()
            filled = cv2.imread(str(base / row_mean.file), 0)
            mean_pectoral = cv2.imread(str(base / row_mean.pectoral_mask), 0) > 0
            assert np.ptp(filled[mean_pectoral]) == 0  # one gray: the mean


def test_nothing_half_written_and_existing_out_refused(raw_folder, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert run_stage0(raw_folder, out) == 2
    assert "not empty" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    # a bad image in the middle of a run: no output folder at all, no leftovers
    broken = tmp_path / "broken"
    shutil.copytree(raw_folder / "RawDICOM", broken)
    (broken / "raw_0005.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"garbage")
    target = tmp_path / "target"
    code = Preprocess_Mammograms.main(
        [
            "--input",
            str(broken),
            "--out",
            str(target),
            "--labels",
            "csv",
            "--labels-file",
            str(raw_folder / "raw_labels.csv"),
        ]
    )
    assert code == 2 and "raw_0005.dcm" in capsys.readouterr().err
    assert not target.exists()
    assert [p.name for p in tmp_path.iterdir() if ".partial" in p.name] == []


# ----------------------------------------------------------------------------
# Bad input: each a clear error naming the file, or a listed skip with --skip-bad
# ----------------------------------------------------------------------------


@pytest.fixture
def good_pngs(tmp_path):
    """Two small 8-bit phantom PNGs named like R-CC.png and L-MLO.png."""
    folder = tmp_path / "input"
    for index, name in ((0, "R-CC.png"), (3, "L-MLO.png")):
        raw = make_raw_phantom(SEED, index, (160, 128))
        write_png(folder / name, raw.reference)
    return folder


def _fails_naming(folder: Path, out: Path, name: str, words: str, capsys, *extra) -> None:
    assert Preprocess_Mammograms.main(["--input", str(folder), "--out", str(out), *extra]) == 2
    error = capsys.readouterr().err
    assert name in error and words in error, error
    assert not out.exists()


def _skip_lists(folder: Path, out: Path, name: str, *extra) -> None:
    assert (
        Preprocess_Mammograms.main(
            ["--input", str(folder), "--out", str(out), "--skip-bad", *extra]
        )
        == 0
    )
    skipped = pd.read_csv(out / "skipped.csv")
    assert skipped["source"].str.contains(name, regex=False).any()
    assert len(pd.read_csv(out / "manifest.csv")) >= 1


def test_unreadable_dicom(good_pngs, tmp_path, capsys):
    (good_pngs / "R-MLO.dcm").write_bytes(b"not a dicom at all")
    _fails_naming(good_pngs, tmp_path / "o", "R-MLO.dcm", "not a readable DICOM", capsys)
    _skip_lists(good_pngs, tmp_path / "s", "R-MLO.dcm")


def test_file_that_is_not_an_image(good_pngs, tmp_path, capsys):
    (good_pngs / "L-CC.png").write_text("meeting notes, not a picture")
    _fails_naming(good_pngs, tmp_path / "o", "L-CC.png", "not a readable image", capsys)
    _skip_lists(good_pngs, tmp_path / "s", "L-CC.png")


def test_dicom_without_pixel_data(good_pngs, tmp_path, capsys):
    raw = make_raw_phantom(SEED, 1, (160, 128))
    del raw.dataset.PixelData
    raw.dataset.save_as(good_pngs / "report.dcm", enforce_file_format=True)
    _fails_naming(good_pngs, tmp_path / "o", "report.dcm", "without pixel data", capsys)


def _compressed_with_gdcm(source: Path, target: Path) -> None:
    """JPEG Lossless (process 14, SV1): pydicom has no encoder for it, GDCM does."""
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(str(source))
    assert reader.Read()
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
    change.SetInput(reader.GetImage())
    assert change.Change()
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(target))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write()


@pytest.mark.parametrize("syntax", ["RLELossless", "JPEG2000Lossless", "JPEGLosslessSV1"])
def test_compressed_transfer_syntaxes_decode_with_the_pinned_plugins(tmp_path, syntax):
    raw = make_raw_phantom(SEED, 0, (160, 128))
    plain = _save(raw, tmp_path)
    compressed = tmp_path / f"{syntax}.dcm"
    if syntax == "JPEGLosslessSV1":
        _compressed_with_gdcm(plain, compressed)
    else:
        raw.dataset.compress(getattr(pydicom.uid, syntax))
        raw.dataset.save_as(compressed, enforce_file_format=True)
    dataset = pydicom.dcmread(compressed, stop_before_pixels=True)
    assert dataset.file_meta.TransferSyntaxUID == getattr(pydicom.uid, syntax)
    np.testing.assert_array_equal(read_mammogram(compressed).pixels, read_mammogram(plain).pixels)


def test_unsupported_transfer_syntax_names_what_to_do(good_pngs, tmp_path, capsys, monkeypatch):
    from pydicom.encaps import encapsulate

    raw = make_raw_phantom(SEED, 1, (160, 128))
    raw.dataset.file_meta.TransferSyntaxUID = pydicom.uid.MPEG2MPML  # video: no decoder at all
    raw.dataset.PixelData = encapsulate([b"\0" * 64])
    raw.dataset["PixelData"].is_undefined_length = True
    raw.dataset.save_as(good_pngs / "video.dcm", enforce_file_format=True)
    _fails_naming(good_pngs, tmp_path / "o", "video.dcm", "no decoder", capsys)
    # a syntax pydicom knows, with its plugin missing: the message names the plugin
    import breastdensity.data.mammograms as mammograms

    class Unavailable:
        is_available = False

    monkeypatch.setattr(mammograms, "get_decoder", lambda uid: Unavailable())
    raw = make_raw_phantom(SEED, 1, (160, 128))
    raw.dataset.compress(pydicom.uid.RLELossless)
    raw.dataset.save_as(tmp_path / "rle.dcm", enforce_file_format=True)
    with pytest.raises(mammograms.MammogramError, match=r"rle\.dcm.*install pylibjpeg-rle"):
        mammograms.read_mammogram(tmp_path / "rle.dcm")


def test_unknown_view(good_pngs, tmp_path, capsys):
    write_png(good_pngs / "scan7.png", make_raw_phantom(SEED, 4, (160, 128)).reference)
    _fails_naming(good_pngs, tmp_path / "o", "scan7.png", "unknown view", capsys)
    _skip_lists(good_pngs, tmp_path / "s", "scan7.png")


def test_unknown_laterality_falls_back_to_the_image_half_and_says_so(tmp_path):
    folder = tmp_path / "input"
    write_png(folder / "CC scan.png", make_raw_phantom(SEED, 1, (160, 128)).reference)  # a left CC
    assert Preprocess_Mammograms.main(["--input", str(folder), "--out", str(tmp_path / "o")]) == 0
    row = pd.read_csv(tmp_path / "o" / "manifest.csv").iloc[0]
    assert (row.projection, row.laterality_source) == ("CC_L", "image half (guess)")


def test_other_views_are_listed_and_skipped(good_pngs, tmp_path, capsys):
    raw = make_raw_phantom(SEED, 0, (160, 128))
    for keyword in ("ViewCodeSequence", "ViewPosition", "PatientOrientation"):
        if keyword in raw.dataset:
            delattr(raw.dataset, keyword)
    raw.dataset.ViewPosition = "XCCL"  # exaggerated cranio-caudal
    raw.dataset.save_as(good_pngs / "xccl.dcm", enforce_file_format=True)
    out = tmp_path / "o"
    assert Preprocess_Mammograms.main(["--input", str(good_pngs), "--out", str(out)]) == 0
    assert "xccl.dcm: view XCCL is not CC or MLO; skipped" in capsys.readouterr().out
    skipped = pd.read_csv(out / "skipped.csv")
    assert skipped["source"].str.endswith("xccl.dcm").tolist() == [True]
    assert len(pd.read_csv(out / "manifest.csv")) == 2


def test_duplicate_images(good_pngs, tmp_path, capsys):
    shutil.copy(good_pngs / "R-CC.png", good_pngs / "copy R-CC.png")
    _fails_naming(good_pngs, tmp_path / "o", "R-CC.png", "duplicate of", capsys)


def test_label_rows_without_images_and_images_without_rows(raw_folder, tmp_path, capsys):
    folder = tmp_path / "images"
    shutil.copytree(raw_folder / "RawDICOM", folder)
    (folder / "raw_0002.dcm").unlink()  # a label row without its image
    extra = make_raw_phantom(SEED + 1, 0, (160, 128))
    extra.dataset.save_as(folder / "unlisted.dcm", enforce_file_format=True)  # no label row
    labels = ["--labels", "csv", "--labels-file", str(raw_folder / "raw_labels.csv")]
    assert (
        Preprocess_Mammograms.main(["--input", str(folder), "--out", str(tmp_path / "o"), *labels])
        == 2
    )
    error = capsys.readouterr().err
    assert "raw_0002.dcm: label row without an image" in error
    assert "unlisted.dcm: image without a label row" in error
    assert not (tmp_path / "o").exists()
    assert (
        Preprocess_Mammograms.main(
            ["--input", str(folder), "--out", str(tmp_path / "s"), "--skip-bad", *labels]
        )
        == 0
    )
    skipped = pd.read_csv(tmp_path / "s" / "skipped.csv")
    assert {"label row without an image", "image without a label row"} <= set(skipped["reason"])
    assert len(pd.read_csv(tmp_path / "s" / "manifest.csv")) == 15
