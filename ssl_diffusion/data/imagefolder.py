"""A user's own images: ``data.root``/train/<class>/* and ``data.root``/val/<class>/*.

Problems are reported as one-line errors naming the file: a missing folder, an empty class, a
non-image file, an unreadable image, or (without ``data.image_size``) images of mixed sizes.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from ssl_diffusion.config.sections import DataConfig
from ssl_diffusion.data.info import DataInfo
from ssl_diffusion.errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


class CheckedImageFolder(Dataset):
    """ImageFolder that validates the tree up front and every image when it is read."""

    def __init__(self, root: Path, classes: list[str] | None, expected_size: int | None) -> None:
        if not root.is_dir():
            raise UserError(f"image folder not found: {root} (expected <data.root>/{root.name}/<class>/*.png)")
        found = sorted(p.name for p in root.iterdir() if p.is_dir())
        if not found:
            raise UserError(f"no class folders in {root} (expected {root}/<class>/<image files>)")
        self.classes = classes or found
        if classes is not None and found != classes:
            raise UserError(f"class folders of {root} ({', '.join(found)}) differ from train's ({', '.join(classes)})")
        self.samples: list[tuple[Path, int]] = []
        for label, name in enumerate(self.classes):
            files = sorted(p for p in (root / name).iterdir() if p.is_file())
            for f in files:
                if f.suffix.lower() not in IMAGE_EXTENSIONS:
                    raise UserError(
                        f"non-image file {f} in an image folder; remove it or move it out of {root}"
                    )
            if not files:
                raise UserError(f"class folder {root / name} is empty; remove it or add images")
            self.samples += [(f, label) for f in files]
        self.expected_size = expected_size
        self.first_size: tuple[int, int] | None = None
        self.resize = None
        if expected_size is not None:
            from torchvision import transforms as T

            self.resize = T.Compose([T.Resize(expected_size), T.CenterCrop(expected_size)])

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, idx: int) -> tuple[Image.Image, int]:
        path, label = self.samples[idx]
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
            raise UserError(f"unreadable image {path}: {exc}") from None
        if self.expected_size is None:  # no resize: every image must share the first one's size
            if self.first_size is None:
                self.first_size = self._size_of(0) if idx != 0 else img.size
            if img.size != self.first_size:
                raise UserError(
                    f"image {path} is {img.size[0]}x{img.size[1]} but the folder's images are "
                    f"{self.first_size[0]}x{self.first_size[1]}; set data.image_size=N to resize all"
                )
        if self.resize is not None:
            img = self.resize(img)
        return img, label

    def _size_of(self, idx: int) -> tuple[int, int]:
        path = self.samples[idx][0]
        try:
            with Image.open(path) as img:
                return img.size
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
            raise UserError(f"unreadable image {path}: {exc}") from None


def load_imagefolder(cfg: DataConfig):
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise UserError(f"data.root={cfg.root} does not exist; point it at a folder with train/ and val/")
    train = CheckedImageFolder(root / "train", None, cfg.image_size)
    test = CheckedImageFolder(root / "val", train.classes, cfg.image_size)
    if cfg.image_size is None:
        native = train._size_of(0)
        if native[0] != native[1]:
            raise UserError(f"images are {native[0]}x{native[1]} (not square); set data.image_size=N")
        size = native[0]
    else:
        size = cfg.image_size
    info = DataInfo("imagefolder", len(train.classes), 3, size, [0.5] * 3, [0.5] * 3, train.classes)
    return train, test, info
