"""Prediction files: the hand-over between stage 2 (prediction) and stage 3 (figures of merit).

Per projection, in ``Prediction/``:

* ``predictions_<short>.txt`` - the reference format: an N x 4 matrix of class
  probabilities (columns A, B, C, D), ``numpy.savetxt``, space separated, no
  header; rows in folder order (class A -> D, then file name sorted).
* ``predictions_<short>.csv`` - the same rows with what is needed to align
  projections by subject rather than by row position:
  ``filename,subject,projection,true_label,predicted_label,A,B,C,D``.

``<short>`` is ``ccr``, ``ccl``, ``mlor`` or ``mlol``.
"""

from __future__ import annotations

import contextlib
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


def txt_path(predictions_dir: str | Path, projection: str) -> Path:
    return Path(predictions_dir) / f"predictions_{SHORT_NAMES[check_projection(projection)]}.txt"


def csv_path(predictions_dir: str | Path, projection: str) -> Path:
    return txt_path(predictions_dir, projection).with_suffix(".csv")


def predictions_table(
    records: Sequence[ImageRecord], projection: str, probabilities: np.ndarray
) -> pd.DataFrame:
    """The CSV content for ``records`` and their (N, 4) probabilities, same row order."""
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
            table[CSV_COLUMNS].to_csv(csv_temporary, index=False)
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
        table = pd.read_csv(csv_file, dtype={"subject": str, "filename": str})
        missing = [column for column in CSV_COLUMNS if column not in table.columns]
        if missing:
            raise DatasetError(f"{csv_file}: missing columns {', '.join(missing)}")
        bad_labels = sorted(set(table["true_label"].dropna()) - set(CLASSES))
        if bad_labels:
            raise DatasetError(f"{csv_file}: unknown true labels {bad_labels}")
        if matrix is not None and (
            matrix.shape[0] != len(table)
            or not np.allclose(matrix, table[list(CLASSES)].to_numpy(), atol=1e-6)
        ):
            raise DatasetError(
                f"{txt_file} and {csv_file} disagree (different rows or values); "
                "regenerate them together with Prediction_ResNet.py"
            )
        table.attrs["matched_by"] = "subject"
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
    table = predictions_table(records, projection, matrix)
    table.attrs["matched_by"] = "position"
    return table
