"""The GPU kit: Fashion-MNIST as one compressed file, carried to an air-gapped GPU node.

A kit folder holds ``fashion_mnist.npz`` (uint8 train/test images and labels, zlib-compressed) and
``manifest.json`` (sha256 and size of every file, image counts, where the data came from, the
wheels carried and why). ``pack_kit`` writes it from Fashion-MNIST in torchvision's layout;
``unpack_kit`` checks it and writes torchvision's raw IDX files again under a data root, so the
project's ``fashion_mnist`` dataset reads the same bytes on the node as on the packing machine.
The repository commits no data: the kit folder is git-ignored (``/kit/``).
"""

from __future__ import annotations

import hashlib
import json
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ssl_diffusion.atomic import atomic_write, atomic_write_text
from ssl_diffusion.errors import UserError

DATA_FILE = "fashion_mnist.npz"
MANIFEST = "manifest.json"
BUDGET_MIB = 64  # the node takes at most 64 MiB of git-ignored inputs in all
RAW = {  # npz key -> torchvision's raw file name (FashionMNIST/raw/)
    "train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte",
}
# No wheel is carried: the ddae/ddaepp path and the torch kNN / linear probe use only the node's
# packages; lightly (SimCLR/DINO/CSD heads), faiss (a second kNN backend), wandb (offline logs) and
# the FID packages are not needed there, and FID runs back on the CPU (gpu_compare.py --collect).
WHEELS_NOTE = ("no wheels: ddae/ddaepp training and the torch kNN/linear probe need only the "
               "node's stack; FID/KID are computed on the CPU by --collect")


@dataclass
class Kit:
    path: Path  # the kit folder
    manifest: dict  # manifest.json as read
    size_bytes: int  # all files of the folder


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_raw(data_root: Path) -> dict[str, np.ndarray]:
    """Fashion-MNIST's four IDX files from ``<data_root>/FashionMNIST/raw`` as uint8 arrays."""
    from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor

    raw = Path(data_root).expanduser() / "FashionMNIST" / "raw"
    missing = [name for name in RAW.values() if not (raw / name).is_file()]
    if missing:
        raise UserError(f"Fashion-MNIST not found under {raw} (missing {', '.join(missing)}); pass "
                        f"--data-root DIR holding FashionMNIST/raw in torchvision's layout")
    return {key: read_sn3_pascalvincent_tensor(str(raw / name), strict=False).numpy()
            for key, name in RAW.items()}


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def write_kit(dest: Path, arrays: dict[str, np.ndarray], source: str,
              budget_mib: float = BUDGET_MIB) -> Kit:
    """Write ``DATA_FILE`` + ``MANIFEST`` into ``dest``; UserError when over ``budget_mib``."""
    shapes = {"train_images": 3, "train_labels": 1, "test_images": 3, "test_labels": 1}
    for key, ndim in shapes.items():
        a = arrays.get(key)
        if a is None or a.dtype != np.uint8 or a.ndim != ndim:
            raise UserError(f"kit array `{key}` must be uint8 with {ndim} dims, got "
                            f"{None if a is None else (a.dtype, a.shape)}")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    data = dest / DATA_FILE
    atomic_write(data, lambda f: np.savez_compressed(f, **{k: arrays[k] for k in shapes}))
    manifest = {
        "created": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "source": source,
        "files": {DATA_FILE: {"sha256": sha256(data), "bytes": data.stat().st_size}},
        "counts": {"train": len(arrays["train_images"]), "test": len(arrays["test_images"])},
        "image_shape": list(arrays["train_images"].shape[1:]), "wheels": [],
        "wheels_note": WHEELS_NOTE,
        "budget_mib": budget_mib,
    }
    atomic_write_text(dest / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    size = folder_bytes(dest)
    if size > budget_mib * 2**20:
        raise UserError(f"kit {dest} holds {size / 2**20:.1f} MiB, over the node's {budget_mib} "
                        f"MiB budget for carried files; remove other files from it")
    return Kit(dest, manifest, size)


def read_kit(path: Path) -> Kit:
    """The kit at ``path`` after checking its manifest and the data file's sha256."""
    path = Path(path).expanduser()
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise UserError(f"no kit at {path} (missing {MANIFEST}); write one with "
                        f"python benchmarks/gpu_kit/pack.py and bring the folder along")
    manifest = json.loads(manifest_path.read_text())
    for name, entry in manifest["files"].items():
        f = path / name
        if not f.is_file() or sha256(f) != entry["sha256"]:
            raise UserError(f"kit file {f} is missing or damaged (sha256 differs from "
                            f"{MANIFEST}); copy the kit folder again")
    return Kit(path, manifest, folder_bytes(path))


def _idx_bytes(a: np.ndarray) -> bytes:
    """IDX (LeCun) encoding of a uint8 array: magic 0x0000 08 <ndim>, big-endian int32 dims."""
    header = struct.pack(">BBBB", 0, 0, 0x08, a.ndim) + struct.pack(f">{a.ndim}i", *a.shape)
    return header + np.ascontiguousarray(a).tobytes()


def unpack_kit(kit: Kit, data_root: Path) -> Path:
    """Write torchvision's FashionMNIST/raw files under ``data_root`` (rewritten only when
    their bytes differ); returns ``data_root`` for ``data.root``."""
    raw = Path(data_root) / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    with np.load(kit.path / DATA_FILE) as z:
        for key, name in RAW.items():
            blob = _idx_bytes(z[key])
            target = raw / name
            if not (target.is_file() and target.read_bytes() == blob):
                atomic_write(target, lambda f, b=blob: f.write(b))
    return Path(data_root)


__all__ = [
    "BUDGET_MIB",
    "DATA_FILE",
    "MANIFEST",
    "Kit",
    "read_kit",
    "read_raw",
    "unpack_kit",
    "write_kit",
]
