"""Shared CLI plumbing: argument parsing helpers and the one-line error contract.

Every CLI's ``main`` runs inside ``run_cli``: a ``UserError`` prints ``error: <message>`` on one
line and exits 2 (so does an OS failure of a known kind: read-only file system, disk full, file
size limit, permissions; ``ssl_diffusion.app.os_errors``); Ctrl-C exits 130; any other exception
prints one line naming its type and how to see the traceback (``SSL_DIFFUSION_DEBUG=1``) and
exits 1.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from ssl_diffusion.app.os_errors import user_error_for
from ssl_diffusion.errors import UserError

EXIT_USER_ERROR = 2
EXIT_INTERNAL = 1
EXIT_INTERRUPTED = 130


def check_device(name: str | None, flag: str = "--device") -> str | None:
    """``name`` when torch can use that device on this machine (``None`` and ``auto`` pass), else
    a one-line ``UserError`` naming the devices that are available."""
    import torch  # here, not at the top: the CLIs' --dry-run and --help stay torch-free

    if name is None or name == "auto":
        return name
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"{flag} `{name}` is not a torch device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserError(f"{flag} {name} but no CUDA device is available; use {flag} cpu")
        if device.index is not None and device.index >= count:
            raise UserError(f"{flag} {name} but this machine has {count} CUDA device(s) "
                            f"(cuda:0..cuda:{count - 1})")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"{flag} {name} but MPS is not available here; use {flag} cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"{flag} `{name}` is not supported; use cpu, cuda or cuda:N")
    return name


def _worker_message(exc: BaseException) -> str | None:
    """DataLoader workers re-raise errors with the original traceback in the message."""
    text = str(exc)
    if "Original Traceback" not in text:
        return None
    last = [line for line in text.strip().splitlines() if line.strip()][-1]
    prefix = "ssl_diffusion.errors.UserError: "
    for p in (prefix, "UserError: ", "NonFiniteLossError: "):
        if p in last:
            return last.split(p, 1)[1]
    return None


def _find_user_error(exc: BaseException) -> BaseException | None:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, UserError):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _find_os_error(exc: BaseException) -> OSError | None:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno is not None:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    debug = os.environ.get("SSL_DIFFUSION_DEBUG", "") not in ("", "0")
    try:
        code = main(argv)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except BaseException as exc:  # the one place that turns errors into one line
        if debug:
            raise
        user = _find_user_error(exc)
        if user is None:  # a read-only file system, a full disk, ulimit -f, ...: one line
            os_error = _find_os_error(exc)
            user = user_error_for(os_error) if os_error is not None else None
        # A worker's UserError is re-raised as UserError("Caught UserError in DataLoader worker
        # ... Original Traceback ..."): report the worker's own message, not that header.
        message = _worker_message(user or exc) or (str(user) if user is not None else None)
        if message is not None:
            print(f"error: {message.splitlines()[0] if message else type(exc).__name__}", file=sys.stderr)
            sys.exit(getattr(user, "exit_code", EXIT_USER_ERROR))
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"error: {type(exc).__name__}: {first} (internal error; rerun with "
              f"SSL_DIFFUSION_DEBUG=1 for the traceback)", file=sys.stderr)
        sys.exit(EXIT_INTERNAL)
    sys.exit(code or 0)
