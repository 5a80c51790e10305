"""Safe file handling: atomic files, owned folders, locks, image headers read before decoding.

A reader never sees a half-written output file, a re-run never leaves stale
files beside new ones, and an unwritable output folder is reported before the
work starts rather than after it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import struct
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path``.

    The temporary file lives in the same folder (same file system), so the final
    ``os.replace`` is atomic; on any exception it is removed and ``path`` is
    left as it was. The temporary name keeps the suffix so that writers that
    choose a format from it (matplotlib, cv2) still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}"
    )
    os.close(handle)
    temporary = Path(temporary)
    # mkstemp creates the file readable by its owner only; give it the usual
    # permissions (0666 minus the umask) that a plain open() would have.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)
    try:
        yield temporary
        with open(temporary, "rb+") as stream:
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(temporary_path)`` and move the result to ``path`` atomically."""
    with atomic_path(path) as temporary:
        write(temporary)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda temporary: temporary.write_text(text))


class UnwritableError(OSError):
    """An output folder cannot receive files (read-only, full, or not a folder)."""


def _probe(folder: Path) -> None:
    """Create, fill, flush and remove a small file in ``folder`` (raises OSError if it cannot)."""
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test.") as stream:
        stream.write(b"\0" * 65536)
        stream.flush()
        os.fsync(stream.fileno())


def check_writable(folder: str | Path, what: str = "output folder") -> Path:
    """Fail before any work if files cannot be written into ``folder``.

    The folder itself is not created: the test file goes into its nearest
    existing ancestor, so a refused run leaves no empty folder behind. A real
    write (not ``os.access``) also catches full disks and read-only mounts,
    and works for root, whom permission bits do not stop.

    Raises:
        UnwritableError: naming the folder and the reason.
    """
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UnwritableError(
            f"cannot write the {what} {folder}: {existing} is a file, not a folder; "
            "choose another location"
        )
    try:
        _probe(existing)
    except OSError as error:
        raise UnwritableError(
            f"cannot write the {what} {folder} ({error.strerror or error}); make it writable, "
            "free some space, or choose another location"
        ) from error
    return folder


def staging_folder(target: str | Path) -> Path:
    """A new, empty folder beside ``target`` to write a complete set of outputs into.

    Pair it with ``replace_folder``: the outputs of a run are written to the
    staging folder and replace ``target`` as a whole only once they are all
    there, so nothing stale from an earlier run is left beside them, and a run
    that fails leaves the earlier set as it was. Staging folders left by
    failed runs are removed here.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    for leftover in target.parent.glob(f".{target.name}.staging-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    return Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.staging-"))


def replace_folder(staging: str | Path, target: str | Path) -> Path:
    """Put the finished ``staging`` folder in place of ``target`` (whose old content is removed)."""
    staging, target = Path(staging), Path(target)
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp made it private; give it the usual mode
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
        os.replace(target, old / target.name)
    try:
        os.replace(staging, target)
    except BaseException:
        if old is not None:  # put the previous set back
            os.replace(old / target.name, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


# ----------------------------------------------------------------------------
# Folders a stage owns: it may replace only what it wrote
# ----------------------------------------------------------------------------

OUTPUT_MARK = ".breastdensity-output"  # written into every folder a stage creates and may replace


class ForeignFolderError(UnwritableError):
    """An output folder holds files the project did not write: it is not replaced."""


def is_owned(folder: str | Path) -> bool:
    """True if ``folder`` carries the mark of a folder a stage wrote."""
    return (Path(folder) / OUTPUT_MARK).is_file()


def mark_owned(folder: str | Path, stage: str) -> Path:
    """Mark ``folder`` (created if needed) as written by ``stage``: a later run may replace it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        folder / OUTPUT_MARK,
        f"written by {stage}; the project may replace this folder as a whole\n",
    )
    return folder


def check_replaceable(folder: str | Path, what: str = "output folder") -> Path:
    """Fail unless ``folder`` is missing, empty, or marked as written by a stage.

    Called before any work, so that a swapped parameter (a test-image folder given
    as an output folder) is refused rather than replaced.

    Raises:
        ForeignFolderError: naming the folder and a few of the files it holds.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ForeignFolderError(
            f"the {what} {folder} is a file, not a folder; choose another location"
        )
    if not folder.is_dir() or is_owned(folder):
        return folder
    content = sorted(entry.name for entry in folder.iterdir())
    if content:
        shown = ", ".join(content[:3]) + (", ..." if len(content) > 3 else "")
        raise ForeignFolderError(
            f"the {what} {folder} already holds files this project did not write ({shown}); "
            "it would be replaced as a whole, so it is left alone: choose another folder, "
            "or empty it yourself if its content can go"
        )
    return folder


def replace_owned_folder(staging: str | Path, target: str | Path, stage: str) -> Path:
    """``replace_folder`` for outputs: ``target`` must be replaceable, the result is marked."""
    check_replaceable(target)
    mark_owned(staging, stage)
    return replace_folder(staging, target)


# ----------------------------------------------------------------------------
# One run per folder
# ----------------------------------------------------------------------------

LOCK_FILE = ".lock"


class FolderBusyError(RuntimeError):
    """Another run holds the folder."""


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _lock_holder(lock: Path) -> tuple[int | None, str | None]:
    try:
        fields = dict(line.split("=", 1) for line in lock.read_text().splitlines() if "=" in line)
        return int(fields["pid"]), fields.get("host")
    except (OSError, ValueError, KeyError):
        return None, None


@contextlib.contextmanager
def hold_folder(folder: str | Path, what: str = "folder") -> Iterator[Path]:
    """Hold ``folder`` for this process for the duration of the block.

    A lock file (process id and host) is created with ``O_EXCL``, so of two runs
    started into one folder exactly one gets it; the other is refused with the
    holder's process id. A lock whose process no longer runs on this host (a run
    that was killed) is stale and taken over; a lock from another host (a shared
    file system) is never presumed stale.

    Raises:
        FolderBusyError: another live run holds the folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_FILE
    host = socket.gethostname()
    for _attempt in range(2):
        try:
            descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            pid, holder_host = _lock_holder(lock)
            stale = pid is not None and holder_host == host and not _process_alive(pid)
            if not stale:
                who = f"process {pid} on {holder_host}" if pid is not None else "another run"
                raise FolderBusyError(
                    f"the {what} {folder} is in use by {who} (lock file {lock}): wait for that run "
                    f"to finish or choose another folder; if no such run is going, delete {lock}"
                ) from None
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(descriptor, "w") as stream:
            stream.write(f"pid={os.getpid()}\nhost={host}\n")
        break
    else:  # pragma: no cover - another process took the stale lock between our two attempts
        raise FolderBusyError(f"the {what} {folder} was taken by another run just now; try again")
    try:
        yield folder
    finally:
        if _lock_holder(lock)[0] == os.getpid():
            lock.unlink(missing_ok=True)


# ----------------------------------------------------------------------------
# Image files: what their header says, before anything decodes them
# ----------------------------------------------------------------------------

# The largest full-field mammograms have about 4,000 x 6,000 pixels; ten times that is
# still an image, more is a decompression bomb (a few KB of PNG declaring gigapixels).
MAX_IMAGE_PIXELS = 2**28


def raster_problem(stream: BinaryIO) -> str | None:
    """Why a raster file must not be decoded, read from its header alone (None if fine).

    PNG: the width and height of its IHDR chunk (a bomb declares gigapixels in a few KB).
    TIFF: a second page (only the first would be read, the rest dropped unseen).
    Other formats are left to OpenCV, which refuses more than 2**30 pixels itself.
    """
    start = stream.read(24)
    if len(start) == 24 and start[:8] == b"\x89PNG\r\n\x1a\n" and start[12:16] == b"IHDR":
        width, height = struct.unpack(">II", start[16:24])
        if width * height > MAX_IMAGE_PIXELS:
            return (
                f"the PNG declares {width} x {height} pixels, more than any mammogram "
                f"({MAX_IMAGE_PIXELS:,} at most): a decompression bomb or a corrupt header, "
                "not decoded"
            )
    elif start[:4] in (b"II*\0", b"MM\0*"):
        order = "<" if start[:2] == b"II" else ">"
        try:  # the first page's directory ends with the offset of the next page's (0: none)
            (first,) = struct.unpack(order + "I", start[4:8])
            stream.seek(first)
            (entries,) = struct.unpack(order + "H", stream.read(2))
            stream.seek(first + 2 + 12 * entries)
            (following,) = struct.unpack(order + "I", stream.read(4))
        except struct.error:
            return "truncated TIFF header"
        if following:
            return "a TIFF of several pages; one image per file is read: save each page as its own file"
    return None
