"""Atomic file writes: a temporary file beside the target, flushed to disk, renamed into place.

Readers never see a partial file, an older file survives a failed rewrite, and concurrent
writers (DDP ranks, parallel runs sharing a cache) each write their own temporary file, so the
last rename wins with a complete file. Files get the ordinary ``0o666 & ~umask`` mode
(``mkstemp`` creates them 0600; run outputs and caches are meant to be shared).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Any


def _shared_mode() -> int:
    umask = os.umask(0)  # the only portable way to read the umask is to set it
    os.umask(umask)
    return 0o666 & ~umask


class AtomicFile:
    """A temporary file beside ``path`` that becomes ``path`` on :meth:`commit`.

    For writers that need a file name or stay open across calls (``zipfile``, ``shutil``,
    ``FaissIndex.save``): write to :attr:`tmp`, then ``commit()``, or ``abort()`` to drop it.
    As a context manager it yields :attr:`tmp`, commits on success and aborts on any error.
    ``fsync=False`` skips the flush to disk (50k per-seed PNGs would each wait for it).
    """

    def __init__(self, path: str | Path, fsync: bool = True) -> None:
        self.path, self.fsync = Path(path), fsync
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.",
                                   suffix=".tmp")
        os.close(fd)
        self.tmp = Path(tmp)

    def commit(self) -> Path:
        """Flush the temporary file, give it the shared mode and rename it to :attr:`path`."""
        try:
            if self.fsync:
                fd = os.open(self.tmp, os.O_RDWR)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            os.chmod(self.tmp, _shared_mode())
            os.replace(self.tmp, self.path)
        except BaseException:
            self.abort()
            raise
        return self.path

    def abort(self) -> None:
        """Remove the temporary file (no-op once committed); an older :attr:`path` stays."""
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> Path:
        return self.tmp

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()
            if isinstance(exc, OSError) and exc.filename is None:  # a failed write: name the file
                exc.filename = str(self.path)


def atomic_write(path: str | Path, write: Callable[[IO[Any]], Any], *, binary: bool = True,
                 fsync: bool = True) -> Path:
    """Call ``write(file)`` on an open temporary file (``"wb"``, or ``"w"`` with
    ``binary=False``) beside ``path``, then rename it into place; returns ``path``."""
    with AtomicFile(path, fsync) as tmp, open(tmp, "wb" if binary else "w") as f:
        write(f)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (text mode, the locale's encoding)."""
    return atomic_write(path, lambda f: f.write(text), binary=False)


__all__ = ["AtomicFile", "atomic_write", "atomic_write_text"]
