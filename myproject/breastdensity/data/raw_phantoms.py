"""Raw phantoms: the synthetic mammograms of ``phantom_model`` as a scanner would store them.

Stage 0 (``mammograms.py``) must undo everything a real DICOM does to an image
before it looks like the reference's input. To measure that, each phantom of
``phantom_model.render_phantom`` (unchanged: it is the *preprocessed* form and the
ground truth) is turned back into a raw 16-bit DICOM:

* the pectoral muscle, which the generator fills with mean gray, becomes bright
  textured muscle again;
* the breast is placed at a random height in a larger detector field, with
  burned-in markers: a view label in a corner and a lead skin marker near the
  nipple;
* stored orientation varies: left breasts mirrored or not, some images flipped
  with FieldOfViewHorizontalFlip = YES, some upside down (PatientOrientation
  "P\\H");
* gray levels are stored through the inverse of one VOI transform (window
  LINEAR, LINEAR_EXACT or SIGMOID, a VOI LUT sequence, or none: a
  "FOR PROCESSING" detector signal), in MONOCHROME1 or MONOCHROME2;
* laterality in ImageLaterality or Laterality, the view in ViewPosition,
  ViewCodeSequence or PatientOrientation (as CBIS-DDSM does).

The true breast mask (pectoral included) and pectoral mask are returned in the
decoded frame (after pydicom and FieldOfViewHorizontalFlip), so stage 0's masks
can be scored with ``mammograms.to_output_frame`` and ``mammograms.dice``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from ..conventions import CLASSES, PROJECTIONS
from ..files import atomic_path, atomic_write, check_writable
from .phantom_model import PD_SAMPLING_BANDS, mirror_for_side, render_phantom, sample_parameters
from .phantoms import encode_png, files_in, refuse_unlisted

VOI_MODES = ("LINEAR", "LINEAR_EXACT", "SIGMOID", "VOI_LUT", "FOR_PROCESSING")
# Digital Mammography X-Ray Image Storage - For Presentation / For Processing
MAMMOGRAPHY_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
MAMMOGRAPHY_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.2.1"
VIEW_MEANINGS = {"CC": "cranio-caudal", "MLO": "medio-lateral oblique"}


@dataclass
class RawPhantom:
    """One raw phantom DICOM with its truth."""

    name: str
    dataset: Dataset
    breast_mask: np.ndarray  # bool, decoded frame, pectoral included
    pectoral_mask: np.ndarray  # bool, decoded frame
    reference: np.ndarray  # uint8: the generator's preprocessed form, reference orientation
    projection: str
    label: str
    subject: str
    description: dict  # how it was stored (VOI mode, flips, tags)


def _stored_from_display(
    display: np.ndarray, mode: str, rng: np.random.Generator, body: np.ndarray | None = None
):
    """Invert one VOI transform: display gray (0-255) -> stored values, and the tags.

    ``body`` (0-1, where the breast is) matters for FOR_PROCESSING only: there the stored
    value is the detector signal, and even the fattiest breast attenuates it far below the
    direct exposure around it, however dark its fat is displayed.
    """
    p = np.clip(display / 255.0, 0.0, 1.0)
    tags: dict = {}
    if mode == "LINEAR":
        centre, width = float(rng.integers(1500, 2500)), float(rng.integers(2000, 3200))
        stored = (p - 0.5) * (width - 1) + centre - 0.5
        tags = {"WindowCenter": centre, "WindowWidth": width, "VOILUTFunction": "LINEAR"}
    elif mode == "LINEAR_EXACT":
        centre, width = float(rng.integers(1500, 2500)), float(rng.integers(2000, 3200))
        stored = (p - 0.5) * width + centre
        tags = {"WindowCenter": centre, "WindowWidth": width, "VOILUTFunction": "LINEAR_EXACT"}
    elif mode == "SIGMOID":
        centre, width = float(rng.integers(1500, 2500)), float(rng.integers(1200, 2000))
        q = np.clip(p, 0.004, 0.996)
        stored = centre - width / 4.0 * np.log(1.0 / q - 1.0)
        tags = {"WindowCenter": centre, "WindowWidth": width, "VOILUTFunction": "SIGMOID"}
    elif mode == "VOI_LUT":
        first, entries, gamma = int(rng.integers(100, 1000)), 4096, float(rng.uniform(0.7, 1.4))
        stored = first + np.round((entries - 1) * p ** (1.0 / gamma))
        lut = np.round(65535 * (np.arange(entries) / (entries - 1)) ** gamma).astype(np.uint16)
        item = Dataset()
        item.LUTDescriptor = [entries, first, 16]
        item.add_new(0x00283006, "US", lut.tolist())  # LUTData, VR US (ambiguous US|OW)
        item.LUTExplanation = f"gamma {gamma:.2f}"
        tags = {"VOILUTSequence": [item]}
    else:  # FOR_PROCESSING: detector signal falls exponentially with attenuation
        baseline = 0.0 if body is None else 1.5 * body  # the breast's own thickness
        stored = 60000.0 * np.exp(-3.0 * p - baseline)
    return np.clip(np.round(stored), 0, 65535).astype(np.uint16), tags


def make_raw_phantom(seed: int, index: int, size: tuple[int, int] = (320, 256)) -> RawPhantom:
    """Raw phantom number ``index`` of a seeded series (deterministic).

    Projections cycle CC_R, CC_L, MLO_R, MLO_L; subject ``raw<index // 4>``.
    VOI modes and photometric interpretations cycle too, so that any run of
    ten images covers them all; everything else is drawn from the seed.
    """
    rng = np.random.default_rng([seed, index])
    projection = PROJECTIONS[index % len(PROJECTIONS)]
    subject = f"raw{index // len(PROJECTIONS):04d}"
    label = CLASSES[int(np.random.default_rng([seed, index // 4]).integers(len(CLASSES)))]
    height, width = size
    parameters = sample_parameters(
        projection, label, float(np.mean(PD_SAMPLING_BANDS[label])), height, width, rng
    )
    phantom = render_phantom(parameters)  # right-breast orientation, chest wall on the right
    reference = mirror_for_side(phantom.image, projection)
    pectoral = phantom.pectoral_mask
    breast = phantom.breast_mask | pectoral
    display = phantom.image.astype(np.float32)

    # Bright, textured pectoral muscle with a soft (1-2 px) edge.
    if pectoral.any():
        muscle = np.clip(
            float(display[phantom.breast_mask].mean()) + rng.uniform(60.0, 90.0), 0, 235
        )
        texture = cv2.GaussianBlur(
            rng.normal(0.0, 6.0, display.shape).astype(np.float32), (0, 0), 2
        )
        weight = cv2.GaussianBlur(pectoral.astype(np.float32), (0, 0), 1.0) * breast
        display = display * (1 - weight) + (muscle + texture) * weight

    # Detector field: chest wall on the right edge, random height and nipple-side margin.
    field_height = height + (
        0 if projection.startswith("MLO") else int(rng.integers(0, height // 6))
    )
    field_width = width + int(rng.integers(width // 8, width // 3))
    top = int(rng.integers(0, field_height - height + 1))
    left = field_width - width
    canvas = np.zeros((field_height, field_width), np.float32)
    truth_breast = np.zeros(canvas.shape, bool)
    truth_pectoral = np.zeros(canvas.shape, bool)
    canvas[top : top + height, left:] = display
    truth_breast[top : top + height, left:] = breast
    # Where X-rays cross the breast: follows the stored image through every flip. A hard
    # edge, so that inside the breast it only offsets the signal (the display image
    # already holds the thickness roll-off under the skin).
    body = truth_breast.astype(np.float32)
    truth_pectoral[top : top + height, left:] = pectoral
    view, side = projection.split("_")
    # Lead skin marker: a white disc a few pixels off the skin line, near the nipple.
    columns = np.flatnonzero(truth_breast.any(axis=0))
    rows = np.flatnonzero(truth_breast[:, columns[0]])
    radius = max(2, width // 60)
    centre = (
        int(columns[0] - radius - rng.integers(3, 8)),
        int(
            np.clip(
                rows.mean() + rng.integers(-height // 6, height // 6),
                radius,
                field_height - radius - 1,
            )
        ),
    )
    cv2.circle(canvas, centre, radius, 255.0, -1, lineType=cv2.LINE_AA)
    # View label burned into the upper corner on the nipple side.
    scale = max(0.35, width / 500)
    text = np.zeros(canvas.shape, np.uint8)  # putText draws on 8-bit images only
    cv2.putText(
        text,
        f"{side}{view}",
        (4, int(22 * scale) + 2),
        cv2.FONT_HERSHEY_SIMPLEX,
        scale,
        255,
        max(1, int(2 * scale)),
        cv2.LINE_AA,
    )
    canvas = np.maximum(canvas, text.astype(np.float32))
    canvas += rng.normal(0.0, 0.8, canvas.shape).astype(np.float32)  # detector noise

    # Stored orientation.
    if side == "L":
        canvas, body, truth_breast, truth_pectoral = (
            a[:, ::-1] for a in (canvas, body, truth_breast, truth_pectoral)
        )
    orientation = str(
        rng.choice(["as reference", "mirrored", "mirrored, FOV flip tag", "upside down"])
    )
    fov_flip = "NO"
    if orientation.startswith("mirrored"):
        canvas, body = canvas[:, ::-1], body[:, ::-1]
        if orientation.endswith("tag"):
            fov_flip = "YES"  # the reader flips back: truth stays in the unflipped frame
        else:
            truth_breast, truth_pectoral = truth_breast[:, ::-1], truth_pectoral[:, ::-1]
    elif orientation == "upside down":
        canvas, body, truth_breast, truth_pectoral = (
            canvas[::-1],
            body[::-1],
            truth_breast[::-1],
            truth_pectoral[::-1],
        )

    mode = VOI_MODES[index % len(VOI_MODES)]
    photometric = "MONOCHROME1" if (index // len(VOI_MODES)) % 2 else "MONOCHROME2"
    if mode == "FOR_PROCESSING":
        photometric = "MONOCHROME2"
    stored_display = 255.0 - canvas if photometric == "MONOCHROME1" else canvas
    stored, voi_tags = _stored_from_display(stored_display, mode, rng, body)

    name = f"raw_{index:04d}"
    meta = FileMetaDataset()
    sop_class = MAMMOGRAPHY_PROCESSING if mode == "FOR_PROCESSING" else MAMMOGRAPHY_PRESENTATION
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[str(seed), name])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = sop_class
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Modality = "MG"
    dataset.PatientID = subject
    dataset.PresentationIntentType = (
        "FOR PROCESSING" if mode == "FOR_PROCESSING" else "FOR PRESENTATION"
    )
    dataset.Rows, dataset.Columns = stored.shape
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = photometric
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 16, 16, 15
    dataset.PixelRepresentation = 0
    dataset.FieldOfViewHorizontalFlip = fov_flip
    for keyword, value in voi_tags.items():
        setattr(dataset, keyword, value)
    laterality_tag = str(rng.choice(["ImageLaterality", "Laterality"]))
    setattr(dataset, laterality_tag, side)
    view_tags = ["ViewPosition", "ViewCodeSequence"]
    if orientation != "upside down":
        view_tags.append("PatientOrientation")
    view_tag = str(rng.choice(view_tags))
    if view_tag == "ViewPosition":
        dataset.ViewPosition = view
    elif view_tag == "ViewCodeSequence":
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator = (
            ("R-10242" if view == "CC" else "R-10226"),
            "SRT",
        )
        code.CodeMeaning = VIEW_MEANINGS[view]
        dataset.ViewCodeSequence = [code]
    else:
        dataset.PatientOrientation = view  # CBIS-DDSM style
    if orientation == "upside down":
        dataset.PatientOrientation = ["P", "H"]
    dataset.PixelData = stored.tobytes()
    description = {
        "voi_mode": mode,
        "photometric": photometric,
        "orientation": orientation,
        "laterality_tag": laterality_tag,
        "view_tag": view_tag,
    }
    return RawPhantom(
        name,
        dataset,
        truth_breast.copy(),
        truth_pectoral.copy(),
        reference,
        projection,
        label,
        subject,
        description,
    )


RAW_DICOM = "RawDICOM"
RAW_TRUTH = "RawTruth"
RAW_LABELS = "raw_labels.csv"
RAW_MANIFEST = "raw_manifest.csv"
RAW_ENTRIES = (RAW_DICOM, RAW_TRUTH, RAW_LABELS, RAW_MANIFEST)
TRUTH_KINDS = ("breast", "pectoral", "reference")


def _truth_names(dicom_file: str) -> list[str]:
    """The truth images written with one DICOM (``RawDICOM/raw_0003.dcm``), relative to out_dir."""
    stem = Path(dicom_file).stem
    return [f"{RAW_TRUTH}/{stem}_{kind}.png" for kind in TRUTH_KINDS]


def raw_files_to_overwrite(out_dir: str | Path) -> list[Path]:
    """The files ``--raw --overwrite`` may delete: exactly those an earlier raw run wrote.

    ``raw_manifest.csv`` lists every DICOM (its ``file`` column); each comes
    with its three truth images. Files in ``RawDICOM/`` or ``RawTruth/`` that
    are not listed were not written by the generator, and then nothing is
    deleted.

    Returns:
        The listed DICOMs and truth images that exist, then ``raw_labels.csv``
        and the manifest itself (last, so that an interrupted deletion can be
        completed by running again). Empty if out_dir holds no raw phantoms.

    Raises:
        FileExistsError: raw phantom files without a readable raw_manifest.csv,
            or files the manifest does not list.
    """
    out_dir = Path(out_dir)
    existing = [name for name in RAW_ENTRIES if (out_dir / name).exists()]
    if not existing:
        return []
    manifest = out_dir / RAW_MANIFEST
    nothing = "so nothing is deleted; move them away yourself or choose another --out"
    if not manifest.is_file():
        raise FileExistsError(
            f"{out_dir} holds {', '.join(existing)} but no {RAW_MANIFEST} of Make_Phantoms.py "
            f"--raw: they were not generated there (or that run did not finish), {nothing}"
        )
    try:
        files = pd.read_csv(manifest, usecols=["file"], dtype=str)["file"].dropna()
    except (ValueError, pd.errors.ParserError) as error:
        raise FileExistsError(
            f"{manifest} is not a manifest of Make_Phantoms.py --raw ({error}), {nothing}"
        ) from error
    listed = {out_dir / name for file in files for name in (file, *_truth_names(file))}
    present = files_in(out_dir, (RAW_DICOM, RAW_TRUTH))
    refuse_unlisted(
        out_dir, present - listed, f"{RAW_DICOM}/ or {RAW_TRUTH}/", RAW_MANIFEST, nothing
    )
    tables = [path for path in (out_dir / RAW_LABELS, manifest) if path.is_file()]
    return [*sorted(present & listed), *tables]


def _delete_raw_files(out_dir: Path, files: list[Path]) -> None:
    """Delete ``files``, then the raw folders this leaves empty."""
    for path in files:
        path.unlink(missing_ok=True)
    for name in (RAW_DICOM, RAW_TRUTH):
        top = out_dir / name
        if top.is_dir():
            for folder in sorted(top.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
            if not any(top.iterdir()):
                top.rmdir()


def write_raw_phantoms(
    out_dir: str | Path,
    count: int,
    seed: int,
    size: tuple[int, int] = (320, 256),
    overwrite: bool = False,
) -> Path:
    """Write ``count`` raw phantoms to ``out_dir``: DICOMs, truth masks, labels and manifest.

    Layout: ``RawDICOM/raw_NNNN.dcm``; ``RawTruth/raw_NNNN_{breast,pectoral,reference}.png``;
    ``raw_labels.csv`` in Preprocess_Mammograms.py's ``csv`` label format, files relative to RawDICOM/
    (file, subject, laterality, view, density); ``raw_manifest.csv``, written last: it
    says the set is complete, and lists what ``overwrite`` may delete later.

    Args:
        overwrite: replace the raw phantoms of an earlier run in out_dir; only the
            files its manifest lists are deleted (``raw_files_to_overwrite``), so
            none of a larger earlier run stays beside the new labels.

    Returns:
        The path of raw_manifest.csv.

    Raises:
        ValueError: count < 1 (before anything is written).
        UnwritableError: out_dir cannot be written (before anything is written).
        FileExistsError: out_dir holds raw phantoms and overwrite is False, or
            files the generator cannot prove it wrote.
        OSError: a write failed (a full disk); the files of this run are removed.
    """
    out_dir = Path(out_dir)
    if count < 1:
        raise ValueError(f"the number of raw phantoms must be at least 1, got {count}")
    check_writable(out_dir, "raw phantom folder")
    ours = raw_files_to_overwrite(out_dir)
    if ours and not overwrite:
        images = sum(path.name not in (RAW_LABELS, RAW_MANIFEST) for path in ours)
        raise FileExistsError(
            f"{out_dir} already holds raw phantoms: --overwrite would delete the {images} "
            f"DICOMs and truth images listed in its {RAW_MANIFEST}, {RAW_LABELS}, the manifest "
            "itself and the folders this leaves empty; or choose another --out"
        )
    _delete_raw_files(out_dir, ours)
    rows, labels, written = [], [], []
    try:
        for index in range(count):
            raw = make_raw_phantom(seed, index, size)
            dicom_path = out_dir / RAW_DICOM / f"{raw.name}.dcm"
            with atomic_path(dicom_path) as temporary:
                raw.dataset.save_as(temporary, enforce_file_format=True)
            written.append(dicom_path)
            for suffix, array in (
                ("breast", raw.breast_mask.astype(np.uint8) * 255),
                ("pectoral", raw.pectoral_mask.astype(np.uint8) * 255),
                ("reference", raw.reference),
            ):
                data = encode_png(array)
                written.append(
                    atomic_write(
                        out_dir / RAW_TRUTH / f"{raw.name}_{suffix}.png",
                        lambda path, data=data: path.write_bytes(data),
                    )
                )
            view, side = raw.projection.split("_")
            labels.append(
                {
                    "file": f"{raw.name}.dcm",
                    "subject": raw.subject,
                    "laterality": side,
                    "view": view,
                    "density": raw.label,
                }
            )
            rows.append(
                {
                    "file": f"{RAW_DICOM}/{raw.name}.dcm",
                    "projection": raw.projection,
                    "subject": raw.subject,
                    "class": raw.label,
                    **raw.description,
                }
            )
        written.append(
            atomic_write(
                out_dir / RAW_LABELS, lambda p: pd.DataFrame(labels).to_csv(p, index=False)
            )
        )
        manifest = out_dir / RAW_MANIFEST
        atomic_write(manifest, lambda p: pd.DataFrame(rows).to_csv(p, index=False))
    except BaseException:
        # No manifest lists these files, so a later --overwrite could not remove
        # them: an incomplete set is removed now rather than left half-written.
        _delete_raw_files(out_dir, written)
        raise
    return manifest
