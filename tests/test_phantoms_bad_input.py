"""Make_Phantoms.py, the phantom generator, on bad input: refused with a message, never data lost.

--overwrite deletes only what an earlier run of the generator wrote (its manifest lists it),
never a tree it did not write; bad flags, unwritable, read-only or full output folders are
reported before any work, and a run that fails leaves no partial set. For the PNG phantom
sets and for --raw DICOM phantoms.
"""

import errno
import os

import Make_Phantoms
import numpy as np
import pandas as pd
import pytest
from conftest import contents, write_png

from breastdensity.data.phantoms import generate_dataset

SIZE = ["64", "64"]


# ----------------------------------------------------------------------------
# PNG phantom sets
# ----------------------------------------------------------------------------


class TestOverwrite:
    def phantoms(self, out, *extra):
        return Make_Phantoms.main(
            ["--out", str(out), "--subjects", "1", "0", "0", "--seed", "1", "--size", *SIZE]
            + ["--workers", "1", *extra]
        )

    def test_never_deletes_a_tree_it_did_not_write(self, tmp_path, capsys):
        foreign = write_png(
            tmp_path / "TestSet" / "CC_R" / "test" / "A" / "x.png", np.zeros((8, 8))
        )
        assert self.phantoms(tmp_path, "--overwrite") == 2
        assert foreign.is_file()
        error = capsys.readouterr().err
        assert "manifest.csv" in error and "TestSet" in error
        assert self.phantoms(tmp_path) == 2
        error = capsys.readouterr().err
        assert "pass --overwrite" not in error  # it would not help: nothing here is ours
        assert foreign.is_file()

    def test_deletes_only_what_its_manifest_lists(self, tmp_path, capsys):
        generate_dataset(tmp_path, (0, 0, 2), (64, 64), seed=1)
        notes = tmp_path / "notes.txt"
        notes.write_text("mine")
        assert self.phantoms(tmp_path) == 2
        error = capsys.readouterr().err
        assert "--overwrite would delete the 16 files" in error  # 2 subjects x 4 views x 2
        user_file = tmp_path / "TestSet" / "CC_R" / "test" / "A" / "user_A_CC_R.png"
        write_png(user_file, np.zeros((8, 8)))
        assert self.phantoms(tmp_path, "--overwrite") == 2  # a file it did not write
        assert "user_A_CC_R.png" in capsys.readouterr().err
        assert len(list(tmp_path.rglob("*.png"))) == 17  # nothing deleted
        user_file.unlink()
        assert self.phantoms(tmp_path, "--overwrite") == 0
        assert not (tmp_path / "TestSet").exists()  # the old split is gone, all of it
        assert notes.read_text() == "mine"  # beside the dataset: kept
        manifest = pd.read_csv(tmp_path / "manifest.csv")
        assert set(manifest["split"]) == {"train"}
        assert len(list(tmp_path.rglob("*.png"))) == 8

    @pytest.mark.parametrize(
        ("flag", "value"),
        [
            ("--label-noise", "-5"),
            ("--label-noise", "nan"),
            ("--label-noise", "inf"),
            ("--seed", "-1"),
            ("--size", "40 40"),
            ("--workers", "0"),
        ],
    )
    def test_bad_arguments_are_refused_before_any_folder(self, tmp_path, flag, value, capsys):
        arguments = ["--out", str(tmp_path / "d"), "--subjects", "1", "0", "0", "--seed", "1"]
        with pytest.raises(SystemExit) as stop:
            Make_Phantoms.main([*arguments, flag, *value.split()])
        assert stop.value.code == 2
        assert flag in capsys.readouterr().err
        assert not (tmp_path / "d").exists()

    def test_unwritable_output_is_reported_before_work(self, tmp_path, capsys):
        (tmp_path / "file").write_text("not a folder")
        assert self.phantoms(tmp_path / "file" / "d") == 2
        assert "cannot write" in capsys.readouterr().err


# ----------------------------------------------------------------------------
# Make_Phantoms.py --raw
# ----------------------------------------------------------------------------


def raw(out, subjects, *extra):
    return Make_Phantoms.main(
        ["--raw", "--out", str(out), "--subjects", str(subjects), "0", "0"]
        + ["--size", "96", "80", "--seed", "3", *extra]
    )


class TestRawPhantoms:
    def test_overwrite_removes_every_file_of_the_earlier_run(self, tmp_path, capsys):
        notes = tmp_path / "notes.txt"
        notes.write_text("mine")
        assert raw(tmp_path, 2) == 0
        assert len(list((tmp_path / "RawDICOM").glob("*.dcm"))) == 8
        assert raw(tmp_path, 1) == 2
        error = capsys.readouterr().err
        assert "--overwrite would delete the 32 DICOMs and truth images" in error
        assert raw(tmp_path, 1, "--overwrite") == 0
        dicoms = sorted(p.name for p in (tmp_path / "RawDICOM").iterdir())
        assert dicoms == [f"raw_{i:04d}.dcm" for i in range(4)]
        assert len(list((tmp_path / "RawTruth").iterdir())) == 12
        labels = pd.read_csv(tmp_path / "raw_labels.csv")
        assert sorted(labels["file"]) == dicoms
        assert len(pd.read_csv(tmp_path / "raw_manifest.csv")) == 4
        assert notes.read_text() == "mine"  # beside the raw phantoms: kept

    def test_overwrite_deletes_nothing_beside_unknown_files(self, tmp_path, capsys):
        assert raw(tmp_path, 1) == 0
        foreign = tmp_path / "RawDICOM" / "scanner_0001.dcm"
        foreign.write_bytes(b"a real scan")
        before = contents(tmp_path)
        assert raw(tmp_path, 1, "--overwrite") == 2
        error = capsys.readouterr().err
        assert "scanner_0001.dcm" in error and "nothing is deleted" in error
        assert contents(tmp_path) == before

    def test_raw_files_without_a_manifest_are_not_deleted(self, tmp_path, capsys):
        (tmp_path / "RawDICOM").mkdir()
        (tmp_path / "RawDICOM" / "raw_0000.dcm").write_bytes(b"someone's")
        assert raw(tmp_path, 1, "--overwrite") == 2
        assert "no raw_manifest.csv" in capsys.readouterr().err
        assert (tmp_path / "RawDICOM" / "raw_0000.dcm").read_bytes() == b"someone's"

    def test_unwritable_folder_is_reported_before_work(self, tmp_path, monkeypatch, capsys):
        import breastdensity.data.raw_phantoms
        import breastdensity.files

        def never(*args, **kwargs):
            raise AssertionError("generated although the output folder is unwritable")

        monkeypatch.setattr(breastdensity.data.raw_phantoms, "make_raw_phantom", never)
        (tmp_path / "file").write_text("")
        assert raw(tmp_path / "file" / "out", 1) == 2
        assert "cannot write the raw phantom folder" in capsys.readouterr().err

        def read_only(folder):
            raise OSError(errno.EROFS, "Read-only file system", str(folder))

        monkeypatch.setattr(breastdensity.files, "_probe", read_only)
        assert raw(tmp_path / "out", 1) == 2
        error = capsys.readouterr().err
        assert "Read-only file system" in error and str(tmp_path / "out") in error
        assert not (tmp_path / "out").exists()

    @pytest.mark.skipif(os.geteuid() == 0, reason="permission bits do not stop root")
    def test_read_only_folder(self, tmp_path, capsys):
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o555)
        try:
            assert raw(folder, 1) == 2
            assert "cannot write the raw phantom folder" in capsys.readouterr().err
        finally:
            folder.chmod(0o755)

    def test_full_disk_while_writing_removes_the_partial_set(self, tmp_path, monkeypatch, capsys):
        import breastdensity.data.raw_phantoms

        make = breastdensity.data.raw_phantoms.make_raw_phantom

        def fill_up(seed, index, size):
            if index == 2:
                raise OSError(errno.ENOSPC, "No space left on device", "RawDICOM/raw_0002.dcm")
            return make(seed, index, size)

        monkeypatch.setattr(breastdensity.data.raw_phantoms, "make_raw_phantom", fill_up)
        assert raw(tmp_path, 1) == 2
        error = capsys.readouterr().err
        assert "No space left on device" in error and str(tmp_path) in error
        assert sorted(p.name for p in tmp_path.iterdir()) == []

    @pytest.mark.parametrize("subjects", [["0", "0", "0"], ["-1", "0", "0"]])
    def test_no_or_negative_subjects_are_refused(self, tmp_path, subjects, capsys):
        with pytest.raises(SystemExit) as stop:
            Make_Phantoms.main(
                ["--raw", "--out", str(tmp_path / "d"), "--subjects", *subjects, "--seed", "1"]
            )
        assert stop.value.code == 2
        assert "--subjects" in capsys.readouterr().err
        assert not (tmp_path / "d").exists()
