"""Stage 0 on bad input: every problem is the project's error naming the file or parameter,
with exit status 2 and nothing written; with --skip-bad, a bad image is listed and skipped."""

from __future__ import annotations

import errno
import os
import re
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import Preprocess_Mammograms
import pytest
from conftest import write_png
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from breastdensity import files
from breastdensity.conventions import DatasetError
from breastdensity.data.label_tables import read_labels
from breastdensity.data.mammograms import MammogramError, preprocess, read_mammogram

SIZE = 64


def breast_image(size: int = SIZE, low: int = 100, high: int = 3000) -> np.ndarray:
    """A right breast: a half-ellipse against the right edge, brighter towards the chest wall."""
    rows, columns = np.mgrid[0:size, 0:size]
    inside = ((columns - (size - 1)) / (0.7 * size)) ** 2 + ((rows - size / 2) / (0.45 * size)) ** 2
    image = np.full((size, size), float(low))
    image[inside <= 1] = low + (high - low) * (1.2 - inside[inside <= 1]) / 1.2
    return image


def write_dicom(path: Path, pixels: np.ndarray | None = None, **tags) -> Path:
    """A 16-bit MONOCHROME2 right CC mammogram; ``tags`` override or add attributes."""
    pixels = breast_image() if pixels is None else pixels
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"  # digital mammography
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID, dataset.SOPInstanceUID = meta.MediaStorageSOPClassUID, generate_uid()
    dataset.Modality, dataset.PatientID = "MG", "P001"
    dataset.ImageLaterality, dataset.ViewPosition = "R", "CC"
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, "MONOCHROME2"
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 16, 16, 15
    dataset.PixelRepresentation = 0
    for keyword, value in tags.items():
        setattr(dataset, keyword, value)
    dataset.PixelData = pixels.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def folder(tmp_path) -> Path:
    """An input folder with one good image (R-CC.png), so --skip-bad runs have an output."""
    folder = tmp_path / "input"
    write_png(folder / "R-CC.png", breast_image(high=250).astype(np.uint8))
    return folder


def stage0(folder: Path, out: Path, *extra) -> int:
    return Preprocess_Mammograms.main(["--input", str(folder), "--out", str(out), *extra])


def refused(folder: Path, out: Path, name: str, words: str, capsys, *extra) -> str:
    """Exit status 2, the message names ``name`` and says ``words``, no output folder."""
    assert stage0(folder, out, *extra) == 2
    error = capsys.readouterr().err
    assert name in error and words in error, error
    assert "Traceback" not in error
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if ".partial" in p.name]
    return error


def skipped_with(folder: Path, out: Path, name: str, words: str, *extra) -> pd.DataFrame:
    """With --skip-bad: exit 0, ``name`` listed in skipped.csv with ``words``, the rest written."""
    assert stage0(folder, out, "--skip-bad", *extra) == 0
    skipped = pd.read_csv(out / "skipped.csv")
    row = skipped[skipped["source"].str.endswith(name)]
    assert len(row) == 1 and words in row["reason"].iloc[0], skipped
    assert len(pd.read_csv(out / "manifest.csv")) >= 1
    return skipped


# ----------------------------------------------------------------------------
# 1. One image: any failure is a MammogramError naming it; specific reasons
# ----------------------------------------------------------------------------


def test_any_failure_inside_one_image_names_it_and_is_skippable(
    folder, tmp_path, capsys, monkeypatch
):
    write_png(folder / "L-CC.png", breast_image(high=250)[:, ::-1].astype(np.uint8))
    real = Preprocess_Mammograms.preprocess

    def broken(mammogram, *args):
        if mammogram.path.name == "L-CC.png":
            raise ZeroDivisionError("float division by zero")
        return real(mammogram, *args)

    monkeypatch.setattr(Preprocess_Mammograms, "preprocess", broken)
    error = refused(folder, tmp_path / "o", "L-CC.png", "ZeroDivisionError", capsys)
    assert "--skip-bad" in error
    skipped_with(folder, tmp_path / "s", "L-CC.png", "cannot preprocess it")


def test_out_of_memory_is_an_abort_naming_the_image(folder, tmp_path, capsys, monkeypatch):
    def exhausted(*args):
        raise MemoryError

    monkeypatch.setattr(Preprocess_Mammograms, "preprocess", exhausted)
    # not skipped even with --skip-bad: the next image would run out of memory too
    refused(folder, tmp_path / "o", "R-CC.png", "out of memory", capsys, "--skip-bad")


@pytest.mark.parametrize(
    ("tags", "words"),
    [
        ({"PhotometricInterpretation": "RGB"}, "RGB (SamplesPerPixel 1)"),
        ({"PhotometricInterpretation": "PALETTE COLOR"}, "colour palette"),
        ({"BitsStored": 8, "HighBit": 7}, "BitsStored 8 allows at most 255"),
        ({"RescaleSlope": 0, "RescaleIntercept": 0}, "RescaleSlope 0"),
        ({"RescaleSlope": "NaN", "RescaleIntercept": 0}, "RescaleSlope nan"),
        ({"RescaleSlope": "inf", "RescaleIntercept": 0}, "RescaleSlope inf"),
        ({"NumberOfFrames": 2}, "2 frames"),
    ],
)
@pytest.mark.filterwarnings("ignore:Invalid value for VR DS")  # pydicom on NaN and inf
def test_dicom_headers_that_cannot_be_shown_right_are_refused(
    folder, tmp_path, capsys, tags, words
):
    if "NumberOfFrames" in tags:  # the pixel data of two frames
        pixels = np.concatenate([breast_image(), breast_image()])
        write_dicom(folder / "bad.dcm", pixels, Rows=SIZE, **tags)
    else:
        write_dicom(folder / "bad.dcm", **tags)
    refused(folder, tmp_path / "o", "bad.dcm", words, capsys)
    skipped_with(folder, tmp_path / "s", "bad.dcm", words)


def _voi_lut(bits_per_entry: int) -> Dataset:
    item = Dataset()
    item.add_new(0x00283002, "US", [256, 0, bits_per_entry])  # LUTDescriptor
    item.add_new(0x00283006, "US", list(range(256)))  # LUTData
    return item


@pytest.mark.parametrize(
    ("tags", "ignored", "shown_with"),
    [
        ({"WindowCenter": 2000, "WindowWidth": 0}, "WindowWidth 0", "percentile window"),
        ({"WindowCenter": 2000, "WindowWidth": -10}, "WindowWidth -10", "percentile window"),
        ({"WindowCenter": "NaN", "WindowWidth": 3000}, "window centre nan", "percentile window"),
        ({"VOILUTSequence": [_voi_lut(0)]}, "0 bits per entry", "percentile window"),
        (
            {"VOILUTSequence": [_voi_lut(0)], "WindowCenter": 1500, "WindowWidth": 3000},
            "0 bits per entry",
            "window LINEAR",
        ),
    ],
)
@pytest.mark.filterwarnings("ignore:Invalid value for VR DS")
def test_broken_display_window_falls_back_and_says_so(
    folder, tmp_path, capsys, tags, ignored, shown_with
):
    """A broken VOI only decides how the image is shown: the next VOI is used (the window, then
    a percentile window in the breast), recorded in the manifest's voi column and warned about."""
    write_dicom(folder / "window.dcm", **tags)
    out = tmp_path / "o"
    assert stage0(folder, out) == 0
    printed = capsys.readouterr().out
    assert "warning:" in printed and "window.dcm" in printed and ignored in printed
    manifest = pd.read_csv(out / "manifest.csv")
    voi = manifest.loc[manifest["source"].str.endswith("window.dcm"), "voi"].iloc[0]
    assert voi.startswith(shown_with) and ignored in voi and "ignored" in voi
    image = cv2.imread(str(out / manifest["file"].iloc[0]), cv2.IMREAD_UNCHANGED)
    assert image.max() > 200  # a real display, not black or NaN


def test_well_formed_windows_and_luts_still_apply(tmp_path):
    lut = read_mammogram(write_dicom(tmp_path / "lut.dcm", VOILUTSequence=[_voi_lut(8)]))
    window = read_mammogram(write_dicom(tmp_path / "w.dcm", WindowCenter=1500, WindowWidth=3000))
    assert (lut.voi, window.voi) == ("VOI LUT sequence", "window LINEAR")
    assert not lut.notes and not window.notes


@pytest.mark.parametrize(
    ("pixels", "words"),
    [
        (np.zeros((SIZE, SIZE)), "image is constant"),
        (np.full((SIZE, SIZE), 700), "image is constant"),
        (np.full((1, 1), 700), "too small (1 x 1 pixels"),
        (np.pad(np.full((3, 3), 3000), ((0, SIZE - 3), (0, SIZE - 3))), "no breast found"),
    ],
    ids=["black", "constant", "1x1", "speck"],
)
@pytest.mark.parametrize("kind", ["dcm", "png"])
def test_images_without_a_breast(folder, tmp_path, capsys, pixels, words, kind):
    if kind == "dcm":
        path = write_dicom(folder / "blank.dcm", pixels)
    else:
        path = write_png(folder / "R-MLO blank.png", (pixels / 3000 * 255).astype(np.uint8))
    with pytest.raises(MammogramError, match=re.escape(words)):
        preprocess(read_mammogram(path))
    refused(folder, tmp_path / "o", path.name, words, capsys)


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A valid PNG header declaring width x height 8-bit gray pixels, and almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = zlib.compress(b"\0" * (width + 1) * 4)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )
    return path


def test_png_decompression_bomb_is_refused_from_its_header(folder, tmp_path, capsys, monkeypatch):
    _png_header_only(folder / "L-CC.png", 40000, 40000)
    decoded = []
    imread = cv2.imread
    monkeypatch.setattr(cv2, "imread", lambda path, *a: decoded.append(path) or imread(path, *a))
    with pytest.raises(MammogramError, match="declares 40000 x 40000 pixels"):
        read_mammogram(folder / "L-CC.png")
    assert decoded == []  # refused before decoding
    refused(folder, tmp_path / "o", "L-CC.png", "decompression bomb", capsys)
    skipped_with(folder, tmp_path / "s", "L-CC.png", "declares 40000 x 40000")


def test_too_large_image_of_another_format_is_refused_too(folder, tmp_path, capsys):
    (folder / "L-CC.pgm").write_bytes(b"P5\n40000 40000\n255\n" + b"\0" * 64)
    refused(folder, tmp_path / "o", "L-CC.pgm", "more than 1073741824 pixels", capsys)


def test_multi_page_tiff_is_refused_like_a_multi_frame_dicom(folder, tmp_path, capsys):
    image = breast_image(high=250).astype(np.uint8)
    assert cv2.imwritemulti(str(folder / "L-MLO.tif"), [image[:, ::-1], image[:, ::-1] // 2])
    refused(folder, tmp_path / "o", "L-MLO.tif", "a TIFF of several pages", capsys)
    # one page is fine
    assert cv2.imwrite(str(folder / "L-MLO.tif"), image[:, ::-1])
    assert stage0(folder, tmp_path / "one") == 0


# ----------------------------------------------------------------------------
# 2. Label tables: every cell and path checked where it is read
# ----------------------------------------------------------------------------


def _table(tmp_path: Path, rows: list[dict], header: str | None = None) -> Path:
    path = tmp_path / "labels.csv"
    table = pd.DataFrame(rows, columns=["file", "subject", "laterality", "view", "density"])
    text = table.to_csv(index=False)
    if header is not None:
        text = header + "\n" + text.split("\n", 1)[1]
    path.write_text(text)
    return path


ROW = {"file": "R-CC.png", "subject": "P001", "laterality": "R", "view": "CC", "density": "B"}


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"file": "../elsewhere/R-CC.png"}, "outside --input"),
        ({"file": "ABSOLUTE"}, "outside --input"),
        ({"file": "SYMLINK"}, "outside --input"),
        ({"file": ""}, "the 'file' cell is empty"),
        ({"subject": ""}, "the subject cell is empty"),
        ({"laterality": "X"}, "laterality 'X' is not L, R, LEFT or RIGHT"),
    ],
    ids=["parent", "absolute", "symlink", "no-file", "no-subject", "laterality"],
)
def test_bad_label_rows_are_refused_naming_the_row(folder, tmp_path, capsys, change, words):
    elsewhere = write_png(
        tmp_path / "elsewhere" / "R-CC.png", breast_image(high=200).astype(np.uint8)
    )
    if change.get("file") == "ABSOLUTE":
        change = {"file": str(elsewhere)}
    if change.get("file") == "SYMLINK":
        (folder / "link.png").symlink_to(elsewhere)
        change = {"file": "link.png"}
    labels = _table(tmp_path, [{**ROW, "file": "R-CC.png", "subject": "P000"}, {**ROW, **change}])
    with pytest.raises(DatasetError, match=words) as caught:
        read_labels("csv", folder, [labels])
    assert f"{labels}, line 3" in str(caught.value)
    arguments = ["--labels", "csv", "--labels-file", str(labels), "--skip-bad"]
    refused(folder, tmp_path / "o", "line 3", words, capsys, *arguments)


def test_a_column_named_twice_is_refused(folder, tmp_path, capsys):
    labels = _table(tmp_path, [ROW], header="file,subject,laterality,density,density")
    with pytest.raises(DatasetError, match="'density' 2 times"):
        read_labels("csv", folder, [labels])
    refused(
        folder,
        tmp_path / "o",
        "labels.csv",
        "'density' 2 times",
        capsys,
        "--labels",
        "csv",
        "--labels-file",
        str(labels),
    )


def test_na_is_a_subject_not_an_empty_cell(folder):
    labels = _table(folder.parent, [{**ROW, "subject": "NA"}])
    assert read_labels("csv", folder, [labels]).rows["subject"].tolist() == ["NA"]


def test_side_words_as_laterality_and_subject(folder, tmp_path, capsys):
    labels = ["--labels", "csv", "--split", "1", "0", "0"]
    # RIGHT as laterality: R
    table = _table(tmp_path, [{**ROW, "laterality": "RIGHT"}])
    assert stage0(folder, tmp_path / "ok", *labels, "--labels-file", str(table)) == 0
    assert pd.read_csv(tmp_path / "ok" / "manifest.csv")["projection"].tolist() == ["CC_R"]
    # RIGHT as the subject: nothing left to name the output file by
    table = _table(tmp_path, [{**ROW, "subject": "RIGHT"}])
    refused(
        folder,
        tmp_path / "o",
        "'RIGHT'",
        "only side or view words",
        capsys,
        *labels,
        "--labels-file",
        str(table),
    )


# ----------------------------------------------------------------------------
# 3. Arguments
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("split", "words"),
    [("0.5 0.5 0.5", "sum to 1"), ("nan 0 0", "fractions >= 0"), ("1.5 -0.5 0", ">= 0")],
)
def test_bad_split_is_refused_before_anything_is_written(folder, tmp_path, capsys, split, words):
    with pytest.raises(SystemExit) as stop:
        stage0(folder, tmp_path / "o", "--labels", "folder", "--split", *split.split())
    assert stop.value.code == 2
    error = capsys.readouterr().err
    assert "--split" in error and words in error
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------
# 4. The output folders
# ----------------------------------------------------------------------------


def _full(path):
    raise OSError(errno.ENOSPC, "No space left on device", str(path))


def test_full_disk_is_found_before_the_work(folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(files, "_probe", _full)
    refused(folder, tmp_path / "o", "--out folder", "No space left on device", capsys)
    qa = tmp_path / "qa" / "qa.png"
    qa.parent.mkdir()
    monkeypatch.setattr(files, "_probe", lambda path: _full(path) if "qa" in str(path) else None)
    refused(folder, tmp_path / "o", "--qa folder", "No space left", capsys, "--qa", str(qa))


def test_read_only_output_folder(folder, tmp_path, capsys):
    parent = tmp_path / "locked"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        try:
            (parent / "probe").write_text("")
        except PermissionError:
            pass
        else:
            pytest.skip("permission bits do not stop this user (root)")
        refused(folder, parent / "o", "--out folder", "cannot write", capsys)
    finally:
        parent.chmod(0o755)


def test_disk_full_while_writing_leaves_nothing(folder, tmp_path, capsys, monkeypatch):
    def full_to_csv(self, path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(pd.DataFrame, "to_csv", full_to_csv)
    refused(folder, tmp_path / "o", "manifest.csv", "No space left on device", capsys)


def test_qa_sheet_that_cannot_be_written_leaves_nothing(folder, tmp_path, capsys, monkeypatch):
    def full(path, sheet_items, *args):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    qa = tmp_path / "qa.png"
    monkeypatch.setattr(
        Preprocess_Mammograms, "plot_contact_sheet", lambda items, path, suffix="": full(path, 0)
    )
    refused(folder, tmp_path / "o", "qa.png", "No space left", capsys, "--qa", str(qa))
    assert not qa.exists()


def test_a_second_run_into_the_same_new_folder_is_refused(folder, tmp_path, capsys):
    out = tmp_path / "new" / "o"
    with files.hold_folder(out, "--out folder"):  # as the first run does
        assert stage0(folder, out) == 2
        error = capsys.readouterr().err
        assert "in use" in error and str(out) in error
        assert [p.name for p in out.iterdir()] == [files.LOCK_FILE]  # nothing of the second run


def test_lock_left_by_a_killed_run_is_taken_over(folder, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    dead = 2**22 + 12345  # above Linux's default pid_max: no such process
    (out / files.LOCK_FILE).write_text(f"pid={dead}\nhost={os.uname().nodename}\n")
    assert stage0(folder, out) == 0
    assert files.LOCK_FILE not in {p.name for p in out.iterdir()}
    assert (out / "manifest.csv").is_file()


def test_existing_output_is_never_replaced(folder, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    assert stage0(folder, out) == 2
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    # a finished stage-0 output is not replaced either: a new folder is asked for
    assert stage0(folder, tmp_path / "first") == 0
    before = sorted(p.name for p in (tmp_path / "first").iterdir())
    assert stage0(folder, tmp_path / "first") == 2
    assert sorted(p.name for p in (tmp_path / "first").iterdir()) == before


# ----------------------------------------------------------------------------
# 5. Clear messages: why images were left out
# ----------------------------------------------------------------------------


def _xccl(path: Path) -> Path:
    return write_dicom(path, ViewPosition="XCCL")


def test_only_other_views_says_why_nothing_is_left(tmp_path, capsys):
    folder = tmp_path / "input"
    _xccl(folder / "xccl.dcm")
    error = refused(folder, tmp_path / "o", "xccl.dcm", "could be preprocessed", capsys)
    assert "1 x view XCCL is not CC or MLO" in error


def test_skipped_images_are_counted_per_reason(folder, tmp_path, capsys):
    _xccl(folder / "a.dcm")
    _xccl(folder / "b.dcm")
    assert stage0(folder, tmp_path / "o") == 0
    printed = capsys.readouterr().out
    assert "skipped 2 in all:\n  2 x view XCCL is not CC or MLO; skipped (a.dcm, b.dcm)" in printed


def test_hidden_files_are_ignored_and_counted(folder, tmp_path, capsys):
    write_png(folder / ".L-CC.png", breast_image(high=250)[:, ::-1].astype(np.uint8))
    assert stage0(folder, tmp_path / "o") == 0
    assert "1 hidden file(s)" in capsys.readouterr().out
    assert len(pd.read_csv(tmp_path / "o" / "manifest.csv")) == 1
    only_hidden = tmp_path / "hidden"
    only_hidden.mkdir()
    (folder / ".L-CC.png").rename(only_hidden / ".L-CC.png")
    refused(only_hidden, tmp_path / "h", ".L-CC.png", "1 hidden file(s)", capsys)


def test_reason_texts_do_not_repeat_the_file_name(tmp_path, capsys):
    folder = tmp_path / "input"
    write_png(folder / "R-CC.png", breast_image(high=250).astype(np.uint8))
    _xccl(folder / "x.dcm")
    assert stage0(folder, tmp_path / "o") == 0
    line = [t for t in capsys.readouterr().out.splitlines() if t.startswith("skipped ")][0]
    assert line.count("x.dcm") == 1, line
