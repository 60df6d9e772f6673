"""Network guard for tests/test_network_free.py, imported at interpreter start as ``sitecustomize``.

Active only when ``SSL_DIFFUSION_NETGUARD_LOG`` names a log file (the test puts this folder first
on ``PYTHONPATH`` of its subprocesses). Every socket connect / sendto and every name lookup is
recorded as one JSON line ``{pid, call, family, address, allowed, where}``; anything that is not
a Unix socket, a netlink socket or the loopback interface is refused with ``OSError`` (lookups
with ``socket.gaierror``) before a packet can leave. The first line each process writes is a
``loaded`` marker, so the test can check the guard was really active in every process.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import socket
import traceback

_LOG = os.environ.get("SSL_DIFFUSION_NETGUARD_LOG")
_LOCAL_NAMES = {None, "", b"", "localhost", b"localhost"}


def _where() -> str:
    """The innermost frames outside this file: who tried to reach the network."""
    frames = [f for f in traceback.extract_stack()[:-3] if f.filename != __file__]
    return " <- ".join(f"{os.path.basename(f.filename)}:{f.lineno}" for f in reversed(frames[-4:]))


def _record(call: str, family: object, address: object, allowed: bool) -> None:
    line = json.dumps({"pid": os.getpid(), "call": call,
                       "family": getattr(family, "name", str(family)),
                       "address": repr(address), "allowed": allowed, "where": _where()})
    fd = os.open(_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())  # one O_APPEND write per line: no interleaving
    finally:
        os.close(fd)


def _local_host(host: object) -> bool:
    if host in _LOCAL_NAMES:
        return True
    text = host.decode() if isinstance(host, bytes) else str(host)
    try:
        return ipaddress.ip_address(text.split("%", 1)[0]).is_loopback
    except ValueError:
        return False  # a host name other than localhost would need DNS


def _local(family: object, address: object) -> bool:
    if family in (getattr(socket, "AF_UNIX", None), getattr(socket, "AF_NETLINK", None)):
        return True
    if family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple):
        return _local_host(address[0])
    return False


def _check(call: str, family: object, address: object) -> None:
    allowed = _local(family, address)
    _record(call, family, address, allowed)
    if not allowed:
        raise OSError(errno.ENETUNREACH, f"network blocked by the test guard ({call} {address!r})")


def _install() -> None:
    sock = socket.socket
    connect, connect_ex, sendto = sock.connect, sock.connect_ex, sock.sendto
    getaddrinfo, by_name, by_name_ex, by_addr = (socket.getaddrinfo, socket.gethostbyname,
                                                 socket.gethostbyname_ex, socket.gethostbyaddr)

    def guarded_connect(self, address):
        _check("connect", self.family, address)
        return connect(self, address)

    def guarded_connect_ex(self, address):
        _check("connect_ex", self.family, address)
        return connect_ex(self, address)

    def guarded_sendto(self, data, *args):
        _check("sendto", self.family, args[-1])
        return sendto(self, data, *args)

    def lookup(call, real):
        def guarded(host, *args, **kwargs):
            allowed = _local_host(host)
            _record(call, "lookup", host, allowed)
            if not allowed:
                raise socket.gaierror(socket.EAI_NONAME, f"name lookup blocked by the test guard "
                                                         f"({host!r})")
            return real(host, *args, **kwargs)

        return guarded

    sock.connect, sock.connect_ex, sock.sendto = guarded_connect, guarded_connect_ex, guarded_sendto
    socket.getaddrinfo = lookup("getaddrinfo", getaddrinfo)
    socket.gethostbyname = lookup("gethostbyname", by_name)
    socket.gethostbyname_ex = lookup("gethostbyname_ex", by_name_ex)
    socket.gethostbyaddr = lookup("gethostbyaddr", by_addr)
    _record("loaded", None, None, True)


if _LOG:
    _install()
