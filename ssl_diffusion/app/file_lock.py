"""Advisory locks (POSIX ``flock``): one process per run directory, serialised read-modify-write
of shared files such as ``metrics.json``.

* :class:`RunLock` locks the run directory itself (its open descriptor), so taking the lock adds
  no file to a run that the command then refuses; once held, the holder's pid, host and command
  are written to ``<run>/.lock`` for the error a second process prints, and removed on release.
  The kernel drops the lock when the holder dies (even on SIGKILL): a stale ``.lock`` file never
  blocks anyone.
* :func:`locked` serialises updates of one file across processes (``.<name>.lock`` beside it).

Where ``fcntl`` is missing (Windows) both are no-ops.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from ssl_diffusion.errors import UserError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

HOLDER_FILE = ".lock"


class RunLock:
    """Exclusive lock on a run directory for the lifetime of one training command."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None or fcntl is None

    @property
    def holder_file(self) -> Path:
        return self.run_dir / HOLDER_FILE

    def acquire(self) -> RunLock:
        """Take the lock (the directory must exist) or raise a ``UserError`` naming the holder."""
        if fcntl is None:
            return self
        fd = os.open(self.run_dir, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = self._read_holder()
            raise UserError(
                f"run directory {self.run_dir} is in use by {holder}; wait for that run to "
                f"finish or stop it, or choose another run.name=..."
            ) from None
        self._fd = fd
        return self

    def _read_holder(self) -> str:
        try:
            text = self.holder_file.read_text().strip()
        except OSError:
            text = ""
        return text or "another process (starting up)"

    def write_holder(self) -> None:
        """Record who holds the lock (called once the command is about to write the run)."""
        if self._fd is None or fcntl is None:
            return
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        command = " ".join(sys.argv)[:200]
        self.holder_file.write_text(
            f"pid {os.getpid()} on {socket.gethostname()} since {started} ({command})\n")

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.holder_file.unlink(missing_ok=True)  # before unlocking: no one else wrote it
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None


@contextlib.contextmanager
def locked(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock for updating ``path`` (blocking; the lock file sits beside it)."""
    path = Path(path)
    if fcntl is None:
        yield
        return
    lock_path = path.with_name(f".{path.name}.lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


__all__ = ["HOLDER_FILE", "RunLock", "locked"]
