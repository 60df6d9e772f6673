"""Image files of the generation stage: PNG grids, ADM-evaluator ``.npz`` and PNG folders.

Every file is written to a temporary name beside its target and renamed into place, so an
interrupted run never leaves a partial file and an older file survives a failed rewrite.
Images are uint8 (N, C, H, W) with C = 1 (grey) or 3 (RGB).
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ssl_diffusion.atomic import AtomicFile, atomic_write


def _pil(image: Tensor):
    arr = np.ascontiguousarray(image.permute(1, 2, 0).numpy())  # (H, W, C) uint8
    return Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr)  # mode L or RGB


def _check_uint8(images: Tensor | np.ndarray) -> Tensor:
    images = torch.as_tensor(images)
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected uint8 images (N, 1|3, H, W), got {images.dtype} "
                         f"{tuple(images.shape)}")
    return images.cpu()


def save_grid(images_uint8: Tensor, path: str | Path, nrow: int | None = None,
              padding: int = 2, pad_value: int = 0, min_width: int = 0) -> Path:
    """PNG grid of uint8 (N, C, H, W) images, ``nrow`` per row (default ceil(sqrt(N))); grey
    images are saved as an 8-bit L image, colour as RGB. With ``min_width`` the grid is enlarged
    by the smallest integer factor that makes it at least that wide (nearest neighbour: every
    pixel becomes a k x k block, so small images stay sharp)."""
    x = _check_uint8(images_uint8)
    n, c, h, w = x.shape
    ncol = nrow or max(1, math.ceil(math.sqrt(n)))
    nrows = math.ceil(n / ncol)
    grid = x.new_full((c, nrows * (h + padding) + padding, ncol * (w + padding) + padding),
                      pad_value)  # (C, H_grid, W_grid)
    for i in range(n):
        r, col = divmod(i, ncol)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, top : top + h, left : left + w] = x[i]
    k = max(1, math.ceil(min_width / grid.shape[2]))
    if k > 1:
        grid = grid.repeat_interleave(k, dim=1).repeat_interleave(k, dim=2)  # (C, k*H, k*W)
    return atomic_write(path, lambda f: _pil(grid).save(f, format="PNG"))


class NpzWriter:
    """Streams uint8 images into an ADM-evaluator ``.npz`` without holding them all in memory.

    Format (openai/guided-diffusion ``evaluations/evaluator.py``): key ``arr_0``, uint8, NHWC
    (N, H, W, 3) in [0, 255]; the evaluator's input placeholder has exactly 3 channels, so grey
    images are replicated to RGB (as the Inception preprocessing here does). Optional labels go
    to ``arr_1``, as ADM's sampling script writes them. The file appears only on ``close()``.
    """

    def __init__(self, path: str | Path, n: int, height: int, width: int, with_labels: bool = False):
        self.path, self.n, self.count = Path(path), n, 0
        self.file = AtomicFile(self.path)
        self.labels: list[np.ndarray] | None = [] if with_labels else None
        self.zip = zipfile.ZipFile(self.file.tmp, "w", zipfile.ZIP_STORED, allowZip64=True)
        self.entry = self.zip.open("arr_0.npy", "w", force_zip64=True)
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
                  "fortran_order": False, "shape": (n, height, width, 3)}
        np.lib.format.write_array_header_1_0(self.entry, header)

    def write(self, images: Tensor, labels: Tensor | None = None) -> None:
        x = _check_uint8(images)
        if self.count + len(x) > self.n:
            raise ValueError(f"NpzWriter expected {self.n} images, got more")
        nhwc = x.expand(-1, 3, -1, -1).permute(0, 2, 3, 1).contiguous()  # (B, H, W, 3)
        self.entry.write(nhwc.numpy().tobytes())
        if self.labels is not None and labels is not None:
            self.labels.append(np.asarray(labels, dtype=np.int64))
        self.count += len(x)

    def close(self) -> Path:
        """Finish the file and move it into place (it must hold exactly ``n`` images)."""
        try:
            if self.count != self.n:
                raise ValueError(f"NpzWriter expected {self.n} images, got {self.count}")
            self.entry.close()
            if self.labels:
                with self.zip.open("arr_1.npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.concatenate(self.labels))
            self.zip.close()
            return self.file.commit()
        finally:
            self.abort()

    def abort(self) -> None:
        """Drop the unfinished temp file (no-op after ``close``); an older file stays."""
        if self.zip.fp is not None:  # still open: an error interrupted writing
            if not self.entry.closed:
                self.entry.close()
            self.zip.close()
        self.file.abort()


def save_npz(images: Tensor | np.ndarray, path: str | Path, labels: Tensor | None = None) -> Path:
    """All uint8 (N, C, H, W) ``images`` as an ADM-evaluator ``.npz`` (see ``NpzWriter``)."""
    x = _check_uint8(images)
    writer = NpzWriter(path, len(x), x.shape[2], x.shape[3], with_labels=labels is not None)
    writer.write(x, labels)
    return writer.close()


def save_png_folder(images: Tensor, seeds: Sequence[int], directory: str | Path) -> list[Path]:
    """One PNG per image, named by its seed (``000042.png``), into ``directory``."""
    x = _check_uint8(images)
    if len(x) != len(seeds):
        raise ValueError(f"{len(x)} images for {len(seeds)} seeds")
    # no fsync: 50k per-seed PNGs would each wait for the disk
    return [atomic_write(Path(directory) / f"{int(s):06d}.png",
                         lambda f, img=img: _pil(img).save(f, format="PNG"), fsync=False)
            for img, s in zip(x, seeds)]


__all__ = ["NpzWriter", "save_grid", "save_npz", "save_png_folder"]
