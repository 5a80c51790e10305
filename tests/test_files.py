"""breastdensity.files: the folder mechanisms every stage relies on (owned output folders, locks)."""

import os
import socket
import subprocess
import sys

import pytest

from breastdensity.files import (
    LOCK_FILE,
    OUTPUT_MARK,
    FolderBusyError,
    ForeignFolderError,
    check_replaceable,
    hold_folder,
    is_owned,
    replace_owned_folder,
    staging_folder,
)


class TestOwnedFolders:
    def test_missing_empty_and_marked_folders_may_be_replaced(self, tmp_path):
        check_replaceable(tmp_path / "missing")
        (tmp_path / "empty").mkdir()
        check_replaceable(tmp_path / "empty")
        staging = staging_folder(tmp_path / "maps")
        (staging / "map.png").write_bytes(b"first")
        replace_owned_folder(staging, tmp_path / "maps", "a test")
        assert is_owned(tmp_path / "maps")
        staging = staging_folder(tmp_path / "maps")
        (staging / "other.png").write_bytes(b"second")
        replace_owned_folder(staging, tmp_path / "maps", "a test")  # its own output: replaced
        assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == [OUTPUT_MARK, "other.png"]

    def test_a_folder_of_other_files_is_refused_and_kept(self, tmp_path):
        images = tmp_path / "TestSet" / "CC_R"
        (images / "test" / "A").mkdir(parents=True)
        (images / "test" / "A" / "s1_A_CC_R.png").write_bytes(b"an image")
        with pytest.raises(ForeignFolderError, match=f"{images} already holds files .*test"):
            check_replaceable(images, "maps folder")
        staging = staging_folder(images)
        with pytest.raises(ForeignFolderError):
            replace_owned_folder(staging, images, "a test")
        assert (images / "test" / "A" / "s1_A_CC_R.png").read_bytes() == b"an image"

    def test_a_file_in_place_of_the_folder(self, tmp_path):
        (tmp_path / "maps").write_text("x")
        with pytest.raises(ForeignFolderError, match="is a file"):
            check_replaceable(tmp_path / "maps")


class TestLocks:
    def test_a_second_holder_is_refused_while_the_first_runs(self, tmp_path):
        with hold_folder(tmp_path / "run", "model folder"):
            with pytest.raises(FolderBusyError, match=r"in use by process \d+ .*delete"):
                with hold_folder(tmp_path / "run", "model folder"):
                    pass
        assert not (tmp_path / "run" / LOCK_FILE).exists()  # released
        with hold_folder(tmp_path / "run"):  # and free again
            pass

    def test_a_lock_of_another_live_process_is_respected(self, tmp_path):
        sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            (tmp_path / LOCK_FILE).write_text(f"pid={sleeper.pid}\nhost={socket.gethostname()}\n")
            with pytest.raises(FolderBusyError, match=f"process {sleeper.pid}"):
                with hold_folder(tmp_path):
                    pass
        finally:
            sleeper.kill()
            sleeper.wait()
        with hold_folder(tmp_path):  # the process ended: its lock is stale and taken over
            assert f"pid={os.getpid()}" in (tmp_path / LOCK_FILE).read_text()

    def test_a_lock_from_another_host_is_never_presumed_stale(self, tmp_path):
        (tmp_path / LOCK_FILE).write_text("pid=1\nhost=another-node\n")
        with pytest.raises(FolderBusyError, match="another-node"):
            with hold_folder(tmp_path):
                pass
