"""Safe output writing: atomic files, whole-folder replacement, early writability checks.

A reader never sees a half-written output file, a re-run never leaves stale
files beside new ones, and an unwritable output folder is reported before the
work starts rather than after it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


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
