"""Atomic file writing: a reader never sees a half-written output file."""

from __future__ import annotations

import contextlib
import os
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
