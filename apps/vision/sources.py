"""Image data sets: where they come from and how they are read, as uint8 tensors or lists of files.

| name | images | source |
|---|---|---|
| digits | 1,797 8x8 grayscale digits (0..16 scaled to 0..255), a fixed 80/20 train/test split | scikit-learn's bundled copy: offline, no files |
| fashion_mnist | 60,000 + 10,000 28x28 grayscale | the four IDX files (.gz or not) in `path`, or torchvision's downloader into `cache_dir` |
| cifar10, cifar100 | 50,000 + 10,000 32x32 RGB | torchvision (`path` holds its `cifar-10-batches-py` folder; `download` fetches it) |
| folder | any PNG/JPEG files | `path/train/<class>/*` and `path/test/<class>/*` (or `path/val/<class>/*`), ImageFolder layout |

In-memory sets come as `ImageSet` (images (N, C, H, W) uint8, labels (N,) int64); folders as `FileSet`.
"""
from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

IN_MEMORY = ("digits", "fashion_mnist", "cifar10", "cifar100")
NAMES = (*IN_MEMORY, "folder")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")
COLOURS = {1: "grayscale", 3: "RGB"}
DIGITS_TEST_SEED = 0  # the fixed permutation that picks the 20% test images of digits


@dataclass(frozen=True)
class ImageSet:
    """images (N, C, H, W) uint8, labels (N,) int64."""

    images: Tensor
    labels: Tensor


@dataclass(frozen=True)
class FileSet:
    """Image files and their labels (N,) int64."""

    files: list[Path]
    labels: Tensor


def check_name(name: str) -> str:
    if name not in NAMES:
        raise ValueError(f"data.name={name!r} is not one of {', '.join(NAMES)}")
    return name


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST format, gzipped or not) as a uint8 array of its stored shape."""
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (bad magic number {data[:4].hex()})")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: its header says {shape} ({np.prod(shape)} bytes), it holds {body.size}")
    return body.reshape(shape)


def find_file(directory: Path, stem: str) -> Path:
    """directory/stem.gz or directory/stem."""
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"no Fashion-MNIST file {stem}(.gz) in {directory}; pass data.path=DIR holding the four IDX files "
        "(train-images-idx3-ubyte.gz, ...) or data.download=true to fetch them with torchvision"
    )


def load_fashion_mnist(path: str | None, download: bool, cache_dir: str) -> dict[str, ImageSet]:
    """Fashion-MNIST train and test from the IDX files in `path`, else torchvision's download into cache_dir."""
    directory = Path(path).expanduser() if path else None
    if directory is not None and directory.is_dir():
        splits = {}
        for split, (images, labels) in FASHION_FILES.items():
            pixels = read_idx(find_file(directory, images))
            splits[split] = ImageSet(torch.from_numpy(pixels.copy()).unsqueeze(1), torch.from_numpy(read_idx(find_file(directory, labels)).astype(np.int64)))
        return splits
    if not download:
        raise FileNotFoundError(
            f"Fashion-MNIST directory {directory} does not exist; pass data.path=DIR holding the four IDX files "
            "or data.download=true to fetch them with torchvision into data.cache_dir"
        )
    from torchvision.datasets import FashionMNIST

    return {
        split: ImageSet(data.data.unsqueeze(1).clone(), data.targets.long().clone())
        for split, data in ((s, FashionMNIST(cache_dir, train=s == "train", download=True)) for s in ("train", "test"))
    }


def load_digits() -> dict[str, ImageSet]:
    """scikit-learn's 8x8 digits, 16 grey levels scaled to 0..255; a fixed 80/20 train/test split."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = torch.from_numpy(np.round(bunch.images * 255 / 16).astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(DIGITS_TEST_SEED))
    n_test = len(labels) // 5
    return {"train": ImageSet(images[order[n_test:]], labels[order[n_test:]]), "test": ImageSet(images[order[:n_test]], labels[order[:n_test]])}


def load_cifar(name: str, path: str | None, download: bool) -> tuple[dict[str, ImageSet], list[str]]:
    """CIFAR-10 or CIFAR-100 through torchvision from `path` (downloading there if `download`)."""
    from torchvision.datasets import CIFAR10, CIFAR100

    if not path:
        raise ValueError(f"{name} needs data.path=DIR (torchvision's root folder; add data.download=true to fetch it)")
    cls = CIFAR10 if name == "cifar10" else CIFAR100
    splits = {}
    for split in ("train", "test"):
        try:
            data = cls(str(Path(path).expanduser()), train=split == "train", download=download)
        except RuntimeError as error:
            raise FileNotFoundError(f"{name}: no data set under {path} ({error}); pass data.download=true to fetch it") from None
        images = torch.from_numpy(np.ascontiguousarray(data.data)).permute(0, 3, 1, 2).contiguous()
        splits[split] = ImageSet(images, torch.tensor(data.targets, dtype=torch.int64))
    return splits, list(data.classes)


def folder_classes(path: str | None) -> tuple[Path, list[str]]:
    """The root folder and its class names (the sub-folders of root/train, sorted)."""
    if not path:
        raise ValueError("data=folder needs data.path=DIR with DIR/train/<class>/*.png and DIR/test/<class>/*.png")
    root = Path(path).expanduser()
    if not (root / "train").is_dir():
        raise FileNotFoundError(f"image folder {root / 'train'} does not exist; expected DIR/train/<class>/<images>")
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    if not classes:
        raise FileNotFoundError(f"{root / 'train'} has no class sub-folders; expected DIR/train/<class>/<images>")
    return root, classes


def load_folder(path: str | None) -> tuple[dict[str, FileSet], list[str]]:
    """Image files of root/train and root/test (or root/val), labelled by their class sub-folder."""
    root, classes = folder_classes(path)
    test = next((root / split for split in ("test", "val") if (root / split).is_dir()), None)
    if test is None:
        raise FileNotFoundError(f"{root} has no test/ or val/ folder; expected DIR/test/<class>/<images>")
    splits = {}
    for split, directory in (("train", root / "train"), ("test", test)):
        files, labels = [], []
        for label, name in enumerate(classes):
            found = sorted(p for p in (directory / name).glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            files += found
            labels += [label] * len(found)
        if not files:
            raise FileNotFoundError(f"no PNG/JPEG images in the class folders of {directory}")
        splits[split] = FileSet(files, torch.tensor(labels, dtype=torch.int64))
    return splits, classes


def image_files(path: str | Path) -> list[Path]:
    """A PNG/JPEG file, or the PNG/JPEG files of a directory (sorted)."""
    path = Path(path).expanduser()
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"no image file or directory at {path}")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no PNG/JPEG files in {path}")
    return files


def read_image(path: Path, channels: int, size: tuple[int, int], convert: bool) -> Tensor:
    """An image file as uint8 (channels, height, width).

    convert: change its colour mode and size to the wanted ones (bicubic resize); False: a different mode
    or size is an error saying so. A file PIL cannot read is an error naming it.
    """
    try:
        with Image.open(path) as image:
            image.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ValueError(f"cannot read image {path}: {error}; the file is corrupt or not a PNG/JPEG") from None
    wanted, found = COLOURS[channels], "grayscale" if image.mode in GRAY_MODES else "RGB"
    if found != wanted and not convert:
        raise ValueError(
            f"{path} is a {found} image (mode {image.mode}) but the model takes {wanted} images; "
            "convert it, or pass data.convert=true to convert every image"
        )
    if image.mode != ("L" if channels == 1 else "RGB"):
        image = image.convert("L" if channels == 1 else "RGB")
    if image.size != (size[1], size[0]):
        if not convert:
            raise ValueError(
                f"{path} is {image.size[0]}x{image.size[1]} (width x height) but the model takes "
                f"{size[1]}x{size[0]}; resize it, or pass data.convert=true to resize every image"
            )
        image = image.resize((size[1], size[0]), Image.Resampling.BICUBIC)
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).reshape(size[0], size[1], channels).permute(2, 0, 1)
