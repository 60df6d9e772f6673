"""Operating-system failures as one-line errors (issue 13): a read-only file system, a full
disk, a file-size limit (``ulimit -f``), missing permissions, an over-long name. Each message
names the path, the cause and the fix, and which flag or key writes somewhere else.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from ssl_diffusion.errors import UserError

# Where each CLI's outputs go, and how to send them elsewhere.
ELSEWHERE = ("write elsewhere: run.root=... (training), --out ... (images, figures), "
             "--no-cache (the feature cache)")

FIXES = {
    errno.EROFS: ("is on a read-only file system", ELSEWHERE),
    errno.ENOSPC: ("cannot be written: the disk is full", "free space or " + ELSEWHERE),
    errno.EDQUOT: ("cannot be written: the disk quota is exhausted", "free space or " + ELSEWHERE),
    errno.EFBIG: ("cannot grow: the file is larger than this process may write (ulimit -f)",
                  "raise the limit (ulimit -f unlimited) or " + ELSEWHERE),
    errno.EACCES: ("is not accessible: permission denied", "fix its permissions or " + ELSEWHERE),
    errno.EPERM: ("is not accessible: operation not permitted", "fix its permissions or " + ELSEWHERE),
    errno.ENAMETOOLONG: ("has a name too long for the file system", "choose a shorter name"),
    errno.ENOTDIR: ("has a file where a folder is expected", "move that file away"),
    errno.EISDIR: ("is a folder where a file is expected", "move that folder away"),
    errno.EMFILE: ("cannot be opened: too many open files", "raise ulimit -n or use fewer data.num_workers"),
    errno.ENOMEM: ("cannot be processed: out of memory", "use a smaller data.batch_size / --batch-size"),
}


def user_error_for(exc: OSError) -> UserError | None:
    """A ``UserError`` for an OS failure of a known kind, else None (a bug: keep the traceback)."""
    fix = FIXES.get(exc.errno)
    if fix is None:
        return None
    problem, remedy = fix
    where = exc.filename if exc.filename is not None else "a file"
    if exc.filename2 is not None:
        where = f"{where} -> {exc.filename2}"
    name = str(Path(where)) if isinstance(where, (str, Path)) else str(where)
    return UserError(f"{name} {problem}; {remedy}")


def check_writable(folder: str | Path, what: str, elsewhere: str) -> None:
    """Fail before slow work when ``what`` cannot be written into ``folder`` (or the nearest
    existing folder above it, which would hold it)."""
    folder = Path(folder)
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise UserError(f"cannot write {what} into {folder}: {probe} is a file; {elsewhere}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {what} into {folder} (read-only or no permission); "
                        f"{elsewhere}")


__all__ = ["check_writable", "user_error_for"]
