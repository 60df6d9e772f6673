"""Atomic writes: content, shared mode, no temporary file left, the old file kept on failure."""

from __future__ import annotations

import os
import stat

import pytest

from ssl_diffusion.atomic import AtomicFile, atomic_write, atomic_write_text


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _expected_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@pytest.mark.parametrize("fsync", [True, False])
def test_atomic_write_creates_parents_and_shared_mode(tmp_path, fsync):
    path = tmp_path / "a" / "b" / "x.bin"
    assert atomic_write(path, lambda f: f.write(b"\x00\x01"), fsync=fsync) == path
    assert path.read_bytes() == b"\x00\x01"
    assert _mode(path) == _expected_mode()  # not mkstemp's 0600
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.bin"]


def test_atomic_write_text_replaces(tmp_path):
    path = tmp_path / "t.txt"
    atomic_write_text(path, "old\n")
    atomic_write_text(path, "néw\n")
    assert path.read_text() == "néw\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.txt"]


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "x.txt"
    path.write_text("old")

    def boom(f):
        f.write("partial")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_write(path, boom, binary=False)
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.txt"]


def test_atomic_file_context_and_abort(tmp_path):
    path = tmp_path / "y.csv"
    with AtomicFile(path) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".y.csv.") and tmp.suffix == ".tmp"
        tmp.write_text("a,b\n")
        assert not path.exists()  # nothing at the target until the block succeeds
    assert path.read_text() == "a,b\n"

    with pytest.raises(KeyError), AtomicFile(path) as tmp:
        tmp.write_text("half")
        raise KeyError("stop")
    assert path.read_text() == "a,b\n"

    f = AtomicFile(path)
    f.tmp.write_text("dropped")
    f.abort()
    f.abort()  # idempotent
    assert path.read_text() == "a,b\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["y.csv"]


def test_run_module_keeps_the_old_name():
    from ssl_diffusion.app import run_dir as run

    assert run.atomic_write_text is atomic_write_text
