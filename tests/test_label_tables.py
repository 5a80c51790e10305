"""Label tables of the public datasets (exact column names) and patient-level splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from breastdensity.conventions import DatasetError
from breastdensity.data.label_tables import assign_splits, read_labels


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"placeholder: label readers only check that the file exists")
    return path


def header_only_dicom(path: Path, patient_id: str) -> Path:
    """A DICOM with just a PatientID (CBIS-DDSM images are matched by it)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID, dataset.SOPInstanceUID = meta.MediaStorageSOPClassUID, generate_uid()
    dataset.PatientID = patient_id
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset.save_as(path, enforce_file_format=True)
    return path


def records(table) -> list[tuple]:
    rows = table.rows.sort_values("file")
    return [
        (Path(r.file).name, r.subject, r.laterality, r.view, r.density, r.dataset_split)
        for r in rows.itertuples()
    ]


def test_csv_format(tmp_path):
    touch(tmp_path / "a" / "one.png")
    touch(tmp_path / "two.dcm")
    pd.DataFrame(
        {
            "file": ["a/one.png", "two.dcm", "gone.png", "three.png"],
            "subject": ["s1", "s1", "s2", "s3"],
            "laterality": ["R", "LEFT", "L", "R"],
            "view": ["CC", "ML", "MLO", "CC"],
            "density": ["B", "3", "A", ""],
        }
    ).to_csv(tmp_path / "labels.csv", index=False)
    table = read_labels("csv", tmp_path, [tmp_path / "labels.csv"])
    assert records(table) == [
        ("one.png", "s1", "R", "CC", "B", ""),
        ("two.dcm", "s1", "L", "MLO", "C", ""),  # "ML" counts as MLO, 3 -> C
    ]
    assert [Path(m).name for m in table.missing_images] == ["gone.png"]
    assert table.skipped["no density A-D"] == 1


def test_folder_format_reads_both_tree_shapes(tmp_path):
    touch(tmp_path / "CC_R" / "B" / "s1_B_CC_R.png")
    touch(tmp_path / "MLO_L" / "test" / "D" / "s2_D_MLO_L.png")  # the reference's TestSet shape
    assert records(read_labels("folder", tmp_path, None)) == [
        ("s1_B_CC_R.png", "s1", "R", "CC", "B", ""),
        ("s2_D_MLO_L.png", "s2", "L", "MLO", "D", ""),
    ]
    with pytest.raises(DatasetError, match="no image in <PROJ>/<CLASS>/"):
        read_labels("folder", tmp_path / "CC_R", None)


def test_vindr_format(tmp_path):
    touch(tmp_path / "images" / "st1" / "im1.dicom")
    touch(tmp_path / "images" / "st1" / "im2.dicom")
    touch(tmp_path / "images" / "st2" / "im3.dicom")
    pd.DataFrame(
        {
            "study_id": ["st1", "st1", "st2", "st2"],
            "series_id": ["se1", "se1", "se2", "se2"],
            "image_id": ["im1", "im2", "im3", "im4"],
            "laterality": ["L", "L", "R", "R"],
            "view_position": ["CC", "MLO", "CC", "MLO"],
            "breast_birads": ["BI-RADS 1"] * 4,
            "breast_density": ["DENSITY C", "DENSITY C", "DENSITY A", "DENSITY A"],
            "split": ["training", "training", "test", "test"],
        }
    ).to_csv(tmp_path / "breast-level_annotations.csv", index=False)
    table = read_labels("vindr", tmp_path, [tmp_path / "breast-level_annotations.csv"])
    assert records(table) == [
        ("im1.dicom", "st1", "L", "CC", "C", "train"),
        ("im2.dicom", "st1", "L", "MLO", "C", "train"),
        ("im3.dicom", "st2", "R", "CC", "A", "test"),
    ]
    assert [Path(m).name for m in table.missing_images] == ["im4.dicom"]


def test_cbis_ddsm_format_matches_by_patient_id(tmp_path):
    images = tmp_path / "CBIS-DDSM"
    header_only_dicom(images / "a" / "1-1.dcm", "Mass-Training_P_00001_LEFT_CC")
    header_only_dicom(images / "b" / "1-1.dcm", "Mass-Training_P_00001_LEFT_MLO")
    header_only_dicom(images / "c" / "1-1.dcm", "Calc-Test_P_00005_RIGHT_CC")
    header_only_dicom(images / "d" / "1-1.dcm", "Mass-Training_P_00001_LEFT_CC_1")  # ROI mask
    mass = pd.DataFrame(
        {
            "patient_id": ["P_00001", "P_00001", "P_00001"],
            "breast_density": ["2", "2", "2"],
            "left or right breast": ["LEFT", "LEFT", "LEFT"],
            "image view": ["CC", "CC", "MLO"],  # two abnormalities on the CC image
            "abnormality id": ["1", "2", "1"],
        }
    )
    calc = pd.DataFrame(
        {
            "patient_id": ["P_00005", "P_00009"],
            "breast density": ["4", "1"],  # the calc CSVs have a space, not an underscore
            "left or right breast": ["RIGHT", "LEFT"],
            "image view": ["CC", "MLO"],
        }
    )
    mass.to_csv(tmp_path / "mass_case_description_train_set.csv", index=False)
    calc.to_csv(tmp_path / "calc_case_description_test_set.csv", index=False)
    table = read_labels(
        "cbis-ddsm",
        images,
        [
            tmp_path / "mass_case_description_train_set.csv",
            tmp_path / "calc_case_description_test_set.csv",
        ],
    )
    rows = table.rows.sort_values(["subject", "view"])
    assert list(
        zip(rows.subject, rows.laterality, rows.view, rows.density, rows.dataset_split, strict=True)
    ) == [
        ("P_00001", "L", "CC", "B", "train"),
        ("P_00001", "L", "MLO", "B", "train"),
        ("P_00005", "R", "CC", "D", "test"),
    ]
    assert table.skipped["further abnormality of the same image"] == 1
    assert table.missing_images == ["P_00009 LEFT MLO"]


def test_rsna_format_skips_empty_density_and_other_views(tmp_path):
    for patient, image in (("10", "1"), ("10", "2"), ("11", "3"), ("11", "4")):
        touch(tmp_path / "train_images" / patient / f"{image}.dcm")
    pd.DataFrame(
        {
            "site_id": ["1"] * 4,
            "patient_id": ["10", "10", "11", "11"],
            "image_id": ["1", "2", "3", "4"],
            "laterality": ["L", "L", "R", "R"],
            "view": ["CC", "MLO", "AT", "CC"],
            "density": ["B", "B", "C", ""],
        }
    ).to_csv(tmp_path / "train.csv", index=False)
    table = read_labels("rsna", tmp_path, [tmp_path / "train.csv"])
    assert records(table) == [
        ("1.dcm", "10", "L", "CC", "B", ""),
        ("2.dcm", "10", "L", "MLO", "B", ""),
    ]
    assert table.skipped == {"view AT (not CC/MLO)": 1, "no density (empty)": 1}


def test_embed_format_joins_clinical_and_metadata(tmp_path):
    for name in ("a.dcm", "b.dcm", "c.dcm", "d.dcm", "e.dcm"):
        touch(tmp_path / "cohort_1" / name)
    pd.DataFrame(
        {
            "empi_anon": ["p1", "p1", "p2", "p3"],
            "acc_anon": ["x1", "x1", "x2", "x3"],
            "tissueden": ["2", "2", "3", "5"],
            "side": ["L", "L", "B", "R"],  # duplicate finding row for x1/L; p3 is male
        }
    ).to_csv(tmp_path / "clinical.csv", index=False)
    root = "/mnt/NAS2/mammo/anon_dicom/cohort_1"
    pd.DataFrame(
        {
            "empi_anon": ["p1", "p1", "p2", "p2", "p3"],
            "acc_anon": ["x1", "x1", "x2", "x2", "x3"],
            "anon_dicom_path": [
                f"{root}/{n}" for n in ("a.dcm", "b.dcm", "c.dcm", "d.dcm", "e.dcm")
            ],
            "ImageLaterality": ["L", "R", "L", "R", "R"],
            "ViewPosition": ["CC", "CC", "MLO", "CC", "CC"],
            "FinalImageType": ["2D", "2D", "2D", "3D", "2D"],
        }
    ).to_csv(tmp_path / "metadata.csv", index=False)
    table = read_labels("embed", tmp_path, [tmp_path / "clinical.csv", tmp_path / "metadata.csv"])
    assert records(table) == [
        ("a.dcm", "p1", "L", "CC", "B", ""),
        ("c.dcm", "p2", "L", "MLO", "C", ""),
    ]
    assert table.skipped["male patient (tissueden 5)"] == 1
    assert table.skipped["not a 2D image"] == 1
    with pytest.raises(DatasetError, match="needs 2 --labels-file"):
        read_labels("embed", tmp_path, [tmp_path / "clinical.csv"])


def test_inbreast_format_ignores_footer_rows(tmp_path):
    touch(tmp_path / "AllDICOMs" / "20586908_6c613a14b80a8591_MG_R_CC_ANON.dcm")
    touch(tmp_path / "AllDICOMs" / "20586934_6c613a14b80a8591_MG_L_ML_ANON.dcm")
    (tmp_path / "INbreast.csv").write_text(
        "Patient ID;Patient age;Laterality;View;Acquisition date;File Name;ACR;Bi-Rads\n"
        "removed;removed;R;CC;200701;20586908;2;1\n"
        "removed;removed;L;ML;200701;20586934;4;2\n"
        "removed;removed;L;CC;200701;20586960;1;2\n"
        ";;;;;;;\n"
        "Total;;;;;;;\n"
    )
    table = read_labels("inbreast", tmp_path, [tmp_path / "INbreast.csv"])
    assert records(table) == [
        ("20586908_6c613a14b80a8591_MG_R_CC_ANON.dcm", "6c613a14b80a8591", "R", "CC", "B", ""),
        ("20586934_6c613a14b80a8591_MG_L_ML_ANON.dcm", "6c613a14b80a8591", "L", "MLO", "D", ""),
    ]
    assert table.missing_images == ["20586960_*.dcm"]


def test_missing_columns_are_named(tmp_path):
    pd.DataFrame({"patient_id": ["1"], "image_id": ["2"]}).to_csv(
        tmp_path / "train.csv", index=False
    )
    with pytest.raises(
        DatasetError, match=r"train\.csv: missing columns laterality, view, density"
    ):
        read_labels("rsna", tmp_path, [tmp_path / "train.csv"])


# ----------------------------------------------------------------------------
# Splits
# ----------------------------------------------------------------------------


def label_rows(subjects: int, seed: int = 0) -> pd.DataFrame:
    """Four images per subject; the two breasts may differ in density."""
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(subjects):
        densities = rng.choice(list("ABCD"), size=2)
        for side, density in zip("LR", densities, strict=True):
            for view in ("CC", "MLO"):
                rows.append(
                    {
                        "file": f"{index}_{side}_{view}.dcm",
                        "subject": f"s{index:03d}",
                        "laterality": side,
                        "view": view,
                        "density": density,
                        "dataset_split": "test" if index % 5 == 0 else "train",
                    }
                )
    return pd.DataFrame(rows)


def test_splits_keep_subjects_together_and_stratify():
    rows = label_rows(80)
    splits = assign_splits(rows, (0.6, 0.2, 0.2), seed=7)
    assert splits.notna().all()
    per_subject = rows.assign(split=splits).groupby("subject")["split"].nunique()
    assert per_subject.max() == 1  # no subject in two splits
    subjects = (
        rows.assign(split=splits)
        .groupby("subject")
        .agg(split=("split", "first"), label=("density", "max"))
    )
    for _, group in subjects.groupby("label"):
        counts = (
            group["split"].value_counts().reindex(["train", "validation", "test"], fill_value=0)
        )
        expected = np.array([0.6, 0.2, 0.2]) * len(group)
        assert np.all(np.abs(counts.to_numpy() - expected) <= 1)  # stratified by class
    assert splits.equals(assign_splits(rows, (0.6, 0.2, 0.2), seed=7))  # seeded
    assert not splits.equals(assign_splits(rows, (0.6, 0.2, 0.2), seed=8))


def test_use_dataset_split_keeps_the_dataset_test_split():
    rows = label_rows(40)
    splits = assign_splits(rows, (0.8, 0.2, 0.0), seed=1, use_dataset_split=True)
    assert ((splits == "test") == (rows["dataset_split"] == "test")).all()
    assert set(splits[rows["dataset_split"] == "train"]) == {"train", "validation"}
    with pytest.raises(DatasetError, match="no test split of its own"):
        assign_splits(
            rows.assign(dataset_split=""), (0.8, 0.2, 0.0), seed=1, use_dataset_split=True
        )
    with pytest.raises(ValueError, match="sum to 1"):
        assign_splits(rows, (0.5, 0.2, 0.2), seed=1)


def test_mias_info_txt_header_lesion_lines_and_pairs(tmp_path):
    info = tmp_path / "Info.txt"
    info.write_text(
        "MIAS MiniMammographic Database\n\nmdb001 G CIRC B 535 425 197\nmdb001 G CIRC B 1 2 3\n"
        "mdb002 D NORM\nmdb003 F CALC B\nmdb004 F NORM\n1) notes that mention mdb001\n",
        encoding="latin-1",
    )
    for number in (1, 2, 3):
        touch(tmp_path / f"mdb{number:03d}.pgm")
    table = read_labels("mias", tmp_path, [info])
    assert records(table) == [
        ("mdb001.pgm", "mias001", "R", "MLO", "B", ""),
        ("mdb002.pgm", "mias001", "L", "MLO", "C", ""),
        ("mdb003.pgm", "mias002", "R", "MLO", "A", ""),
    ]
    assert table.rows.sort_values("file")["source_density"].tolist() == ["G", "D", "F"]
    assert table.missing_images == [str(tmp_path / "mdb004.pgm")]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("mdb001 G NORM\nmdb001 D CIRC B 1 2 3\n", "line 2: mdb001 has background tissue D"),
        ("mdb001 X NORM\n", "line 1: 'mdb001 X NORM' is not"),
        ("REFNUM BG CLASS\n", "no 'mdbNNN F|G|D"),
    ],
)
def test_mias_info_txt_problems_are_named(tmp_path, text, words):
    info = tmp_path / "Info.txt"
    info.write_text(text)
    with pytest.raises(DatasetError, match=words):
        read_labels("mias", tmp_path, [info])
