"""Prediction files: the hand-over between stage 2 (prediction) and stage 3 (figures of merit).

Per projection, in ``Prediction/``:

* ``predictions_<short>.txt`` - the reference format: an N x 4 matrix of class
  probabilities (columns A, B, C, D), ``numpy.savetxt``, space separated, no
  header; rows in folder order (class A -> D, then file name sorted).
* ``predictions_<short>.csv`` - the same rows with what is needed to align
  projections by subject rather than by row position:
  ``filename,subject,projection,true_label,predicted_label,A,B,C,D``, then the
  provenance columns ``model`` (the model file, relative to the CSV's folder),
  ``model_sha256`` and ``model_projection`` (the projection the model was
  trained on, from its ``training_config.json``; empty when unknown).

``<short>`` is ``ccr``, ``ccl``, ``mlor`` or ``mlol``. Reading checks every
probability row (finite, in [0, 1], summing to 1) and the predicted label.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .conventions import (
    CLASSES,
    SHORT_NAMES,
    DatasetError,
    ImageRecord,
    check_projection,
    list_class_images,
    projection_test_folder,
)
from .files import atomic_path

CSV_COLUMNS = ["filename", "subject", "projection", "true_label", "predicted_label", *CLASSES]
# Optional when reading: files written before they existed lack them.
PROVENANCE_COLUMNS = ["model", "model_sha256", "model_projection"]
# Probabilities are float32 softmax outputs: rows sum to 1 within rounding.
SUM_TOLERANCE = 1e-3


def txt_path(predictions_dir: str | Path, projection: str) -> Path:
    return Path(predictions_dir) / f"predictions_{SHORT_NAMES[check_projection(projection)]}.txt"


def csv_path(predictions_dir: str | Path, projection: str) -> Path:
    return txt_path(predictions_dir, projection).with_suffix(".csv")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_provenance(
    model_file: str | Path, predictions_dir: str | Path, model_projection: str | None
) -> dict[str, str]:
    """The provenance columns for predictions of ``model_file`` written to ``predictions_dir``.

    The model path is stored relative to the prediction folder, so the files
    stay valid when the repository is moved or cloned elsewhere.
    """
    relative = os.path.relpath(Path(model_file).resolve(), Path(predictions_dir).resolve())
    return {
        "model": Path(relative).as_posix(),
        "model_sha256": file_sha256(model_file),
        "model_projection": model_projection or "",
    }


def model_set(model_file: Path) -> Path:
    """The folder holding a model's ``<PROJ>_model/`` (its "models root"), else its own folder."""
    folder = Path(model_file).parent
    return folder.parent if folder.name.endswith("_model") else folder


def check_probabilities(
    probabilities: np.ndarray, source: str, names: Sequence[str], hint: str = ""
) -> None:
    """Every row finite, in [0, 1] and summing to 1; else DatasetError naming source and row.

    Args:
        probabilities: (N, 4) matrix.
        source: what the rows come from (a file, a model), first in the message.
        names: the image file name of each row, for the message.
        hint: appended to the message (what to do).
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    problems = (
        (~np.isfinite(probabilities).all(axis=1), "probabilities are not finite"),
        (((probabilities < -1e-6) | (probabilities > 1 + 1e-6)).any(axis=1), "outside [0, 1]"),
        (np.abs(probabilities.sum(axis=1) - 1) > SUM_TOLERANCE, "sum"),
    )
    for bad, what in problems:
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            values = ", ".join(f"{v:.4g}" for v in probabilities[row])
            if what == "sum":
                what = f"probabilities sum to {probabilities[row].sum():.4g}, not 1"
            raise DatasetError(
                f"{source}, row {row + 1} ({names[row]}): {what} ({values}); "
                f"{int(bad.sum())} of {len(bad)} rows are affected{hint}"
            )


def predictions_table(
    records: Sequence[ImageRecord],
    projection: str,
    probabilities: np.ndarray,
    provenance: dict[str, str] | None = None,
) -> pd.DataFrame:
    """The CSV content for ``records`` and their (N, 4) probabilities, same row order.

    ``provenance`` (see ``model_provenance``) adds the model columns.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.shape != (len(records), len(CLASSES)):
        raise ValueError(
            f"expected probabilities of shape ({len(records)}, {len(CLASSES)}), "
            f"got {probabilities.shape}"
        )
    table = pd.DataFrame(
        {
            "filename": [record.path.name for record in records],
            "subject": [record.subject for record in records],
            "projection": projection,
            "true_label": [record.label for record in records],
            "predicted_label": [CLASSES[i] for i in probabilities.argmax(axis=1)],
        }
    )
    for index, label in enumerate(CLASSES):
        table[label] = probabilities[:, index]
    for column, value in (provenance or {}).items():
        table[column] = value
    return table


def write_predictions(
    predictions_dir: str | Path,
    tables: dict[str, pd.DataFrame],
) -> list[Path]:
    """Write txt + csv for every projection of ``tables``, all or nothing.

    Every file is first written to a temporary file beside its target; the
    targets are replaced only once all temporary files are complete.
    """
    written = []
    with contextlib.ExitStack() as stack:
        for projection, table in tables.items():
            txt_target, csv_target = (
                txt_path(predictions_dir, projection),
                csv_path(predictions_dir, projection),
            )
            txt_temporary = stack.enter_context(atomic_path(txt_target))
            np.savetxt(txt_temporary, table[list(CLASSES)].to_numpy(np.float64))
            csv_temporary = stack.enter_context(atomic_path(csv_target))
            columns = CSV_COLUMNS + [c for c in PROVENANCE_COLUMNS if c in table.columns]
            table[columns].to_csv(csv_temporary, index=False)
            written += [txt_target, csv_target]
    return written


def read_predictions(
    predictions_dir: str | Path,
    projection: str,
    test_root: str | Path | None = None,
) -> pd.DataFrame | None:
    """Read one projection's predictions as a table with the CSV columns.

    Uses the CSV when present (and checks it against the txt). With only the
    txt file, labels and subjects come from the test folder tree
    ``<test_root>/<PROJ>/test/<CLASS>/`` in sorted order, matched by position
    as the reference did; the table then has ``attrs['matched_by'] == 'position'``.

    Returns:
        The table, or None when neither file exists.

    Raises:
        DatasetError: malformed files, or txt and csv that disagree.
    """
    txt_file, csv_file = (
        txt_path(predictions_dir, projection),
        csv_path(predictions_dir, projection),
    )
    matrix = None
    if txt_file.exists():
        try:
            matrix = np.loadtxt(txt_file, ndmin=2)
        except ValueError as error:
            raise DatasetError(f"{txt_file}: not a numeric matrix ({error})") from error
        if matrix.shape[1] != len(CLASSES):
            raise DatasetError(
                f"{txt_file}: expected {len(CLASSES)} columns, found {matrix.shape[1]}"
            )
    if csv_file.exists():
        try:
            table = pd.read_csv(csv_file, dtype={"subject": str, "filename": str, "model": str})
        except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
            raise DatasetError(
                f"{csv_file}: not a readable prediction table ({type(error).__name__}: {error}); "
                "regenerate it with Prediction_ResNet.py"
            ) from error
        missing = [column for column in CSV_COLUMNS if column not in table.columns]
        if missing:
            raise DatasetError(f"{csv_file}: missing columns {', '.join(missing)}")
        bad_labels = sorted(set(table["true_label"].dropna()) - set(CLASSES))
        if bad_labels:
            raise DatasetError(f"{csv_file}: unknown true labels {bad_labels}")
        check_rows_projection(table, projection, csv_file)
        probabilities = numeric_probabilities(table, csv_file)
        check_probabilities(probabilities, str(csv_file), table["filename"].tolist())
        check_predicted_labels(table, probabilities, csv_file)
        if matrix is not None:
            check_probabilities(matrix, str(txt_file), table["filename"].tolist())
        if matrix is not None and (
            matrix.shape[0] != len(table)
            or not np.allclose(matrix, table[list(CLASSES)].to_numpy(), atol=1e-6)
        ):
            raise DatasetError(
                f"{txt_file} and {csv_file} disagree (different rows or values); "
                "regenerate them together with Prediction_ResNet.py"
            )
        table.attrs["matched_by"] = "subject"
        table.attrs["source"] = csv_file
        models = table["model"].dropna().unique() if "model" in table.columns else []
        model_file = (csv_file.parent / models[0]).resolve() if len(models) == 1 else None
        if model_file is not None and model_file.is_file():
            # The models root it came from, for stage 3's check; unknown when the
            # prediction folder was copied elsewhere and the path leads nowhere.
            table.attrs["model_set"] = model_set(model_file)
        return table
    if matrix is None:
        return None
    if test_root is None:
        raise DatasetError(
            f"{txt_file} has no companion {csv_file.name}: give the test folder to recover "
            "the true labels by position"
        )
    records = list_class_images(projection_test_folder(test_root, projection), what="test")
    if len(records) != matrix.shape[0]:
        raise DatasetError(
            f"{txt_file} has {matrix.shape[0]} rows but {projection_test_folder(test_root, projection)} "
            f"holds {len(records)} images: they cannot be matched by position"
        )
    check_probabilities(matrix, str(txt_file), [record.path.name for record in records])
    table = predictions_table(records, projection, matrix)
    table.attrs["matched_by"] = "position"
    return table


def check_rows_projection(table: pd.DataFrame, projection: str, source: Path) -> None:
    """Every row of ``predictions_<proj>.csv`` must say it is of ``projection``.

    A file renamed from another projection's (the CC_L predictions copied to
    ``predictions_ccr.csv``) would otherwise be scored as CC_R.
    """
    stated = table["projection"].astype(str).to_numpy()
    wrong = np.flatnonzero(stated != projection)
    if len(wrong):
        row = int(wrong[0])
        raise DatasetError(
            f"{source} is the {projection} prediction file, but {len(wrong)} of its {len(table)} "
            f"rows are of {', '.join(sorted(set(stated[wrong])))} (row {row + 1}: "
            f"{table['filename'].iloc[row]}); was another projection's file renamed? Regenerate "
            "it with Prediction_ResNet.py"
        )


def numeric_probabilities(table: pd.DataFrame, source: Path) -> np.ndarray:
    """The class columns as a float matrix; a cell that is not a number names its row."""
    columns = table[list(CLASSES)]
    numbers = columns.apply(pd.to_numeric, errors="coerce")
    bad = numbers.isna() & columns.notna()
    if bad.to_numpy().any():
        row = int(np.flatnonzero(bad.any(axis=1).to_numpy())[0])
        column = bad.columns[bad.iloc[row].to_numpy()][0]
        raise DatasetError(
            f"{source}, row {row + 1} ({table['filename'].iloc[row]}): the probability of "
            f"{column} is {columns[column].iloc[row]!r}, not a number; regenerate the file with "
            "Prediction_ResNet.py"
        )
    return numbers.to_numpy(np.float64)


def check_predicted_labels(table: pd.DataFrame, probabilities: np.ndarray, source) -> None:
    """``predicted_label`` must be the class of the highest probability (the argmax)."""
    expected = np.array(CLASSES)[probabilities.argmax(axis=1)]
    wrong = np.flatnonzero(table["predicted_label"].to_numpy() != expected)
    if len(wrong):
        row = int(wrong[0])
        raise DatasetError(
            f"{source}, row {row + 1} ({table['filename'].iloc[row]}): predicted_label "
            f"{table['predicted_label'].iloc[row]} but the highest probability is "
            f"{expected[row]}; {len(wrong)} row(s) disagree: regenerate the file with "
            "Prediction_ResNet.py"
        )
