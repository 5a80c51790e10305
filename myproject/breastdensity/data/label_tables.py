"""Density labels of public mammography datasets, read into one table, and patient-level splits.

Every reader returns a :class:`LabelTable`: one row per image with the columns

    file (absolute path) | subject | laterality (L/R) | view (CC/MLO/...) | density (A-D)
    | dataset_split ("train", "test" or "")

plus the label rows whose image was not found and counts of rows skipped on
purpose (no density, a view other than CC/MLO, a male patient ...). Every row is
checked where it is read, and a bad one refused naming the table and line: an
empty file or subject cell, a laterality other than L/R/LEFT/RIGHT (or empty),
an image path that leads outside the input folder (``../x.dcm``, an absolute
path, a symbolic link out of it), a header naming a column twice. The
formats, with their exact column names:

* ``folder``: an existing ``<PROJ>/<CLASS>/`` (or ``<PROJ>/<split>/<CLASS>/``) tree.
* ``csv``: ``file, subject, laterality, view, density`` (file relative to the input).
* ``vindr`` (VinDr-Mammo ``breast-level_annotations.csv``): ``study_id, series_id,
  image_id, laterality, view_position, breast_density ("DENSITY A"..), split
  ("training"/"test")``; images ``images/<study_id>/<image_id>.dicom``.
* ``cbis-ddsm`` (case-description CSVs, one row per abnormality): ``patient_id,
  breast_density`` (mass) or ``breast density`` (calc) 1-4, ``left or right breast``,
  ``image view``; images are matched by their PatientID tag
  ``(Mass|Calc)-(Training|Test)_P_NNNNN_(LEFT|RIGHT)_(CC|MLO)``.
* ``rsna`` (``train.csv``): ``patient_id, image_id, laterality, view, density``;
  images ``train_images/<patient_id>/<image_id>.dcm``.
* ``embed``: clinical ``empi_anon, acc_anon, tissueden (1-4, 5 = male), side
  (L/R/B)`` joined on ``acc_anon`` and side with the metadata ``acc_anon,
  anon_dicom_path, ImageLaterality, ViewPosition, FinalImageType`` (2D only).
* ``inbreast`` (``INbreast.csv``, or ``.xls`` with xlrd): ``File Name, Laterality,
  View (CC/ML), ACR (1-4)``; images ``<File Name>_*.dcm``; footer rows ignored.
* ``mias`` (mini-MIAS ``Info.txt`` as distributed): free header text, then
  ``REFNUM BG CLASS [SEVERITY X Y RADIUS]`` per image and abnormality (an image
  with two lesions has two lines); images ``<REFNUM>.pgm`` (or ``.png``/``.jpg``).
  Films ``2w-1`` (right) and ``2w`` (left) are woman ``w``; every film is MLO.
  The background tissue F / G / D becomes A-D by :data:`MIAS_DENSITY`, and the
  original level is kept in ``source_density``.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom

from ..conventions import CLASSES, PROJECTIONS, DatasetError, parse_image_name

FORMATS = ("folder", "csv", "vindr", "cbis-ddsm", "rsna", "embed", "inbreast", "mias")
COLUMNS = ["file", "subject", "laterality", "view", "density", "dataset_split", "source_density"]
# MIAS grades background tissue in three levels, the models in four BI-RADS classes.
# The three levels go to the three lowest classes in order: fatty -> A, fatty-glandular
# (MIAS' most common level, like B in screening) -> B, dense-glandular -> C (dense,
# the class most dense breasts of a screening population are in). D is then learnt from
# phantoms only; the training targets can spread each label over its neighbours
# (``Train_ResNet.py --targets ordinal``), which makes the exact choice matter less.
MIAS_DENSITY = {"F": "A", "G": "B", "D": "C"}
_MIAS_LINE = re.compile(r"^(mdb\d{3})\s+([FGD])\s+([A-Z]+)\b(.*)$")
MIAS_SUFFIXES = (".pgm", ".png", ".jpg", ".jpeg", ".tif", ".tiff")
SPLITS = ("train", "validation", "test")
_NUMERIC_DENSITY = {1: "A", 2: "B", 3: "C", 4: "D"}
_CBIS_ID = re.compile(r"^(Mass|Calc)-(Training|Test)_(P_\d{5})_(LEFT|RIGHT)_(CC|MLO)$")


@dataclass
class LabelTable:
    rows: pd.DataFrame  # COLUMNS
    missing_images: list[str] = field(default_factory=list)  # label rows without an image
    skipped: Counter = field(default_factory=Counter)  # reason -> rows skipped on purpose


def _read_csv(path: Path, **kwargs) -> pd.DataFrame:
    """The table as text cells; an empty cell is "" (not NaN, and "NA" stays "NA")."""
    if not path.is_file():
        raise DatasetError(f"label file {path} does not exist")
    try:
        # The header as written: pandas renames a repeated column ("density.1").
        header = pd.read_csv(path, header=None, nrows=1, dtype=str, keep_default_na=False, **kwargs)
        table = pd.read_csv(path, dtype=str, keep_default_na=False, **kwargs)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as error:
        raise DatasetError(f"{path}: cannot read it as CSV ({error})") from error
    except OSError as error:
        raise DatasetError(f"{path}: cannot read it ({error.strerror or error})") from error
    _refuse_repeated_columns([str(name).strip() for name in header.iloc[0]], path)
    return table


def _refuse_repeated_columns(names: list[str], path: Path) -> None:
    repeated = [name for name, count in Counter(names).items() if count > 1 and name]
    if repeated:
        raise DatasetError(
            f"{path}: the header names the column {repeated[0]!r} "
            f"{names.count(repeated[0])} times; which one is meant cannot be guessed: keep one"
        )


def _require(table: pd.DataFrame, columns: list[str], path: Path, what: str) -> None:
    missing = [column for column in columns if column not in table.columns]
    if missing:
        raise DatasetError(
            f"{path}: missing columns {', '.join(missing)} for --labels {what} "
            f"(found: {', '.join(map(str, table.columns))})"
        )


def _density(value) -> str | None:
    """'A'..'D', 'DENSITY B', 1..4 -> 'A'..'D'; anything else (empty, 5) -> None."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    text = str(value).strip().upper().replace("DENSITY", "").strip()
    if text in CLASSES:
        return text
    try:
        return _NUMERIC_DENSITY.get(int(float(text)))
    except ValueError:
        return None


def _text(value) -> str:
    """A cell as stripped text; "" for an empty one (NaN from pandas or Excel)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return str(value).strip()


def _side(value) -> str | None:
    text = _text(value).upper()
    return {"L": "L", "LEFT": "L", "R": "R", "RIGHT": "R"}.get(text)


def _view(value) -> str:
    text = _text(value).upper()
    return "MLO" if text in ("MLO", "ML") else text


def _cells(values: dict, columns: list[str], where: str) -> list[str]:
    """The cells an image path is built from; an empty one is refused naming the row."""
    texts = [_text(values[column]) for column in columns]
    for column, text in zip(columns, texts, strict=True):
        if not text:
            raise DatasetError(
                f"{where}: the {column!r} cell is empty; every row needs it to find the image "
                "(fill it in or delete the row)"
            )
    return texts


def _checked(record: dict, input_dir: Path) -> dict:
    """One row as the readers built it, checked; ``where`` (table and line) names it."""
    where = record.pop("where")
    file = Path(record["file"])
    resolved, root = file.resolve(), input_dir.resolve()
    if not resolved.is_relative_to(root):
        raise DatasetError(
            f"{where}: the image {file} is outside --input {input_dir}"
            + (f" (it leads to {resolved})" if resolved != file else "")
            + "; stage 0 reads only images under --input: move the image there or correct the row"
        )
    record["subject"] = _text(record["subject"])
    if not record["subject"]:
        raise DatasetError(
            f"{where}: the subject cell is empty; every image needs its patient's id "
            "(it keeps a patient's images in one split)"
        )
    laterality = _text(record["laterality"])
    record["laterality"] = _side(laterality) if laterality else None
    if laterality and record["laterality"] is None:
        raise DatasetError(
            f"{where}: laterality {laterality!r} is not L, R, LEFT or RIGHT; correct it, or leave "
            "it empty to have the side read from the image"
        )
    record["view"] = _view(record["view"])
    record.setdefault("source_density", "")  # only some datasets grade otherwise than A-D
    return record


def _finish(
    records: list[dict], missing: list[str], skipped: Counter, input_dir: Path
) -> LabelTable:
    return _table([_checked(record, input_dir) for record in records], missing, skipped)


def _table(records: list[dict], missing: list[str], skipped: Counter) -> LabelTable:
    return LabelTable(pd.DataFrame(records, columns=COLUMNS), missing, skipped)


def _with_images(records: list[dict], skipped: Counter, input_dir: Path) -> LabelTable:
    """Split records into those whose file exists and the missing ones (all checked first:
    a path outside --input is refused even if nothing is there)."""
    kept, missing = [], []
    for record in records:
        record = _checked(record, input_dir)
        (kept if Path(record["file"]).is_file() else missing).append(record)
    return _table(kept, [str(r["file"]) for r in missing], skipped)


def read_folder(input_dir: Path) -> LabelTable:
    records = []
    for projection in PROJECTIONS:
        for label in CLASSES:
            # <PROJ>/<CLASS>/ or the reference's <PROJ>/<split>/<CLASS>/ (TestSet/CC_R/test/A)
            paths = [
                *(input_dir / projection / label).glob("*"),
                *(input_dir / projection).glob(f"*/{label}/*"),
            ]
            for path in sorted(paths):
                if path.is_file() and not path.name.startswith("."):
                    view, side = projection.split("_")
                    records.append(
                        {
                            "where": str(path),
                            "file": str(path),
                            "subject": parse_image_name(path).subject,
                            "laterality": side,
                            "view": view,
                            "density": label,
                            "dataset_split": "",
                        }
                    )
    if not records:
        raise DatasetError(
            f"{input_dir}: no image in <PROJ>/<CLASS>/ folders ({', '.join(PROJECTIONS)} / "
            f"{'/'.join(CLASSES)}) for --labels folder"
        )
    return _finish(records, [], Counter(), input_dir)


def read_csv_labels(input_dir: Path, path: Path) -> LabelTable:
    table = _read_csv(path)
    _require(table, ["file", "subject", "laterality", "view", "density"], path, "csv")
    records, skipped = [], Counter()
    for line, values in enumerate(table.to_dict("records"), start=2):
        density = _density(values["density"])
        if density is None:
            skipped["no density A-D"] += 1
            continue
        where = f"{path}, line {line}"
        (file,) = _cells(values, ["file"], where)
        records.append(
            {
                "where": where,
                "file": str(input_dir / file),
                "subject": values["subject"],
                "laterality": values["laterality"],
                "view": values["view"],
                "density": density,
                "dataset_split": "",
            }
        )
    return _with_images(records, skipped, input_dir)


def read_vindr(input_dir: Path, path: Path) -> LabelTable:
    table = _read_csv(path)
    columns = [
        "study_id",
        "series_id",
        "image_id",
        "laterality",
        "view_position",
        "breast_density",
        "split",
    ]
    _require(table, columns, path, "vindr")
    records, skipped = [], Counter()
    for line, values in enumerate(table.to_dict("records"), start=2):
        density = _density(values["breast_density"])
        if density is None:
            skipped["no density A-D"] += 1
            continue
        where = f"{path}, line {line}"
        study, image = _cells(values, ["study_id", "image_id"], where)
        records.append(
            {
                "where": where,
                "file": str(input_dir / "images" / study / f"{image}.dicom"),
                "subject": study,
                "laterality": values["laterality"],
                "view": values["view_position"],
                "density": density,
                "dataset_split": "test" if _text(values["split"]).lower() == "test" else "train",
            }
        )
    return _with_images(records, skipped, input_dir)


def read_rsna(input_dir: Path, path: Path) -> LabelTable:
    table = _read_csv(path)
    _require(table, ["patient_id", "image_id", "laterality", "view", "density"], path, "rsna")
    records, skipped = [], Counter()
    for line, values in enumerate(table.to_dict("records"), start=2):
        density = _density(values["density"])
        if density is None:
            skipped["no density (empty)"] += 1
            continue
        if _view(values["view"]) not in ("CC", "MLO"):
            skipped[f"view {values['view']} (not CC/MLO)"] += 1
            continue
        where = f"{path}, line {line}"
        patient, image = _cells(values, ["patient_id", "image_id"], where)
        records.append(
            {
                "where": where,
                "file": str(input_dir / "train_images" / patient / f"{image}.dcm"),
                "subject": patient,
                "laterality": values["laterality"],
                "view": values["view"],
                "density": density,
                "dataset_split": "",
            }
        )
    return _with_images(records, skipped, input_dir)


def read_cbis_ddsm(input_dir: Path, paths: list[Path]) -> LabelTable:
    """Case-description CSVs (mass and/or calc), images matched by PatientID."""
    labels: dict[tuple[str, str, str], str] = {}
    skipped = Counter()
    for path in paths:
        table = _read_csv(path)
        density_column = "breast_density" if "breast_density" in table.columns else "breast density"
        _require(
            table,
            ["patient_id", density_column, "left or right breast", "image view"],
            path,
            "cbis-ddsm",
        )
        for values in table.to_dict("records"):
            density = _density(values[density_column])
            key = (
                str(values["patient_id"]).strip(),
                str(values["left or right breast"]).strip().upper(),
                _view(values["image view"]),
            )
            if density is None:
                skipped["no density 1-4"] += 1
            elif key in labels:
                skipped["further abnormality of the same image"] += 1
            else:
                labels[key] = density
    records, matched = [], set()
    for file in sorted(p for p in input_dir.rglob("*.dcm")):
        try:
            patient_id = str(pydicom.dcmread(file, stop_before_pixels=True).get("PatientID", ""))
        except Exception:  # noqa: BLE001 - reported later when the image is read
            patient_id = ""
        match = _CBIS_ID.match(patient_id)
        if match is None:
            continue  # ROI masks and crops have a suffix (_1, _2): not full mammograms
        collection, part, patient, side, view = match.groups()
        key = (patient, side, view)
        if key not in labels:
            skipped["image without a label row"] += 1
            continue
        if key in matched:  # the same image downloaded with the mass and the calc collection
            skipped["same image in another collection"] += 1
            continue
        matched.add(key)
        records.append(
            {
                "where": str(file),
                "file": str(file),
                "subject": patient,
                "laterality": side[0],
                "view": view,
                "density": labels[key],
                "dataset_split": "test" if part == "Test" else "train",
            }
        )
    missing = [f"{p} {s} {v}" for (p, s, v) in labels if (p, s, v) not in matched]
    return _finish(records, missing, skipped, input_dir)


def read_embed(input_dir: Path, clinical_path: Path, metadata_path: Path) -> LabelTable:
    clinical = _read_csv(clinical_path)
    _require(clinical, ["empi_anon", "acc_anon", "tissueden", "side"], clinical_path, "embed")
    metadata = _read_csv(metadata_path)
    _require(
        metadata,
        ["acc_anon", "anon_dicom_path", "ImageLaterality", "ViewPosition", "FinalImageType"],
        metadata_path,
        "embed",
    )
    skipped = Counter()
    is_2d = metadata["FinalImageType"].str.upper().str.strip() == "2D"
    skipped["not a 2D image"] += int((~is_2d).sum())
    metadata = metadata[is_2d]
    records = []
    for row in clinical.drop_duplicates(["acc_anon", "side"]).itertuples():
        if str(row.tissueden).strip() == "5":
            skipped["male patient (tissueden 5)"] += 1
            continue
        density = _density(row.tissueden)
        if density is None:
            skipped["no density 1-4"] += 1
            continue
        images = metadata[metadata["acc_anon"] == row.acc_anon]
        side = str(row.side).strip().upper()
        if side != "B":
            images = images[images["ImageLaterality"].str.upper().str.strip() == side]
        for image in images.itertuples():
            where = f"{metadata_path}, line {image.Index + 2}"
            (relative,) = _cells(image._asdict(), ["anon_dicom_path"], where)
            relative = relative.split("anon_dicom/", 1)[-1].lstrip("/")
            records.append(
                {
                    "where": f"{where} ({clinical_path}, line {row.Index + 2})",
                    "file": str(input_dir / relative),
                    "subject": row.empi_anon,
                    "laterality": image.ImageLaterality,
                    "view": image.ViewPosition,
                    "density": density,
                    "dataset_split": "",
                }
            )
    return _with_images(records, skipped, input_dir)


def read_inbreast(input_dir: Path, path: Path) -> LabelTable:
    if path.suffix.lower() == ".xls":
        try:
            table = pd.read_excel(path, dtype=str)
            header = pd.read_excel(path, header=None, nrows=1, dtype=str)
        except ImportError as error:
            raise DatasetError(
                f"{path}: reading .xls needs xlrd (pip install xlrd), or save it as CSV"
            ) from error
        _refuse_repeated_columns([_text(name) for name in header.iloc[0]], path)
    else:
        table = _read_csv(path, sep=None, engine="python")  # INbreast.csv uses ';'
    table.columns = [str(c).strip() for c in table.columns]
    _require(table, ["File Name", "Laterality", "View", "ACR"], path, "inbreast")
    files = {p.name.split("_")[0]: p for p in input_dir.rglob("*.dcm")}
    records, missing, skipped = [], [], Counter()
    for line, values in enumerate(table.to_dict("records"), start=2):
        name = _text(values["File Name"]).split(".")[0]
        if not name.isdigit():
            continue  # footer rows (totals, notes)
        density = _density(values["ACR"])
        if density is None:
            skipped["no ACR 1-4"] += 1
            continue
        file = files.get(name)
        if file is None:
            missing.append(f"{name}_*.dcm")
            continue
        parts = file.stem.split("_")
        subject = parts[1] if len(parts) > 1 else name
        records.append(
            {
                "where": f"{path}, line {line}",
                "file": str(file),
                "subject": subject,
                "laterality": values["Laterality"],
                "view": values["View"],
                "density": density,
                "dataset_split": "",
            }
        )
    return _finish(records, missing, skipped, input_dir)


def read_mias(input_dir: Path, path: Path) -> LabelTable:
    """mini-MIAS ``Info.txt``: one label per film, the two films of a woman one subject."""
    if not path.is_file():
        raise DatasetError(f"label file {path} does not exist")
    try:
        lines = path.read_text(encoding="latin-1").splitlines()
    except OSError as error:
        raise DatasetError(f"{path}: cannot read it ({error.strerror})") from error
    levels: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text.lower().startswith("mdb"):
            continue  # the database's description, column notes, blank lines
        match = _MIAS_LINE.match(text)
        if match is None:
            raise DatasetError(
                f"{path}, line {number}: {text!r} is not 'REFNUM BG CLASS [SEVERITY X Y RADIUS]' "
                "with BG one of F, G, D"
            )
        name, level = match.group(1), match.group(2)
        if levels.setdefault(name, level) != level:  # two lesions: two lines, one tissue
            raise DatasetError(
                f"{path}, line {number}: {name} has background tissue {level} here and "
                f"{levels[name]} on an earlier line"
            )
    if not levels:
        raise DatasetError(f"{path}: no 'mdbNNN F|G|D ...' line; is it MIAS' Info.txt?")
    files = {}
    for candidate in input_dir.rglob("mdb*"):
        if candidate.is_file() and candidate.suffix.lower() in MIAS_SUFFIXES:
            files.setdefault(candidate.stem.lower(), candidate)
    records, missing = [], []
    for name, level in levels.items():
        file = files.get(name)
        if file is None:
            missing.append(str(input_dir / f"{name}.pgm"))
            continue
        film = int(name[3:])
        records.append(
            {
                "where": f"{path} ({name})",
                "file": str(file),
                "subject": f"mias{(film + 1) // 2:03d}",
                "laterality": "R" if film % 2 else "L",
                "view": "MLO",
                "density": MIAS_DENSITY[level],
                "dataset_split": "",
                "source_density": level,
            }
        )
    return _finish(records, missing, Counter(), input_dir)


def read_labels(kind: str, input_dir: str | Path, label_files: list[Path] | None) -> LabelTable:
    """Read the labels of ``kind`` (one of FORMATS) for the images under ``input_dir``."""
    input_dir = Path(input_dir)
    label_files = [Path(p) for p in (label_files or [])]
    needed = {"folder": 0, "embed": 2}.get(kind, 1)
    if kind == "cbis-ddsm" and label_files:
        needed = len(label_files)
    if len(label_files) != needed:
        raise DatasetError(
            f"--labels {kind} needs {needed} --labels-file "
            + ("(clinical table, then metadata table)" if kind == "embed" else "")
        )
    if kind == "folder":
        return read_folder(input_dir)
    if kind == "csv":
        return read_csv_labels(input_dir, label_files[0])
    if kind == "vindr":
        return read_vindr(input_dir, label_files[0])
    if kind == "cbis-ddsm":
        return read_cbis_ddsm(input_dir, label_files)
    if kind == "rsna":
        return read_rsna(input_dir, label_files[0])
    if kind == "embed":
        return read_embed(input_dir, label_files[0], label_files[1])
    if kind == "inbreast":
        return read_inbreast(input_dir, label_files[0])
    if kind == "mias":
        return read_mias(input_dir, label_files[0])
    raise ValueError(f"unknown label format {kind!r}; expected one of {', '.join(FORMATS)}")


# ----------------------------------------------------------------------------
# Patient-level splits
# ----------------------------------------------------------------------------


def _allocate(count: int, fractions: tuple[float, ...]) -> list[int]:
    """Largest-remainder split of ``count`` items by ``fractions``."""
    raw = [count * f for f in fractions]
    sizes = [int(np.floor(r)) for r in raw]
    for index in sorted(range(len(raw)), key=lambda i: -(raw[i] - sizes[i]))[: count - sum(sizes)]:
        sizes[index] += 1
    return sizes


def assign_splits(
    rows: pd.DataFrame,
    fractions: tuple[float, float, float],
    seed: int,
    use_dataset_split: bool = False,
) -> pd.Series:
    """Split name per row: all images of a subject in one split, stratified by class, seeded.

    A subject's class for stratification is its densest label (density can
    differ between breasts). With ``use_dataset_split`` the subjects of the
    dataset's own test split stay in test, and the others are divided between
    train and validation in the ratio of the first two fractions.
    """
    if len(fractions) != 3 or min(fractions) < 0 or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"--split needs three fractions >= 0 that sum to 1, got {fractions}")
    subjects = rows.groupby("subject")["density"].max()
    assignment: dict[str, str] = {}
    pool = subjects
    if use_dataset_split:
        dataset_test = set(rows.loc[rows["dataset_split"] == "test", "subject"])
        if not dataset_test:
            raise DatasetError(
                "--use-dataset-split: this label table has no test split of its own "
                "(only vindr and cbis-ddsm have one); use --split instead"
            )
        assignment.update({subject: "test" for subject in dataset_test})
        pool = subjects[~subjects.index.isin(dataset_test)]
        total = fractions[0] + fractions[1]
        fractions = (fractions[0] / total, fractions[1] / total, 0.0) if total else (1.0, 0.0, 0.0)
    rng = np.random.default_rng(seed)
    for label in CLASSES:
        members = sorted(pool.index[pool == label])
        members = [members[i] for i in rng.permutation(len(members))]
        start = 0
        for split, size in zip(SPLITS, _allocate(len(members), fractions), strict=True):
            assignment.update({subject: split for subject in members[start : start + size]})
            start += size
    return rows["subject"].map(assignment)
