"""ImageDataModule: a named image data set (`apps.vision.sources`) as uint8 batches, normalised and augmented
on the training device.

Loaders yield [images, labels]: images (B, C, H, W) uint8, labels (B,) int64; predict yields [images].
In-memory sets are read a whole batch per indexing operation (no per-image Python work, no workers needed);
`on_after_batch_transfer` then turns the uint8 batch into normalised float32 on the device, with the cheap
batch augmentations during training (`apps.vision.augment`). The validation set is a seeded random part of
the training set (`val_size`); the test set is the data set's own. The training loader reshuffles every
epoch and drops its last partial batch (Mixup pairs images within a batch and needs equal halves).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import to_2tuple
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from apps.vision import sources
from apps.vision.augment import BatchAugment, RandAugment, normalize

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
KNOWN = {  # name -> (classes, channels, (height, width)), so predicting needs no training data
    "digits": ([str(d) for d in range(10)], 1, (8, 8)),
    "fashion_mnist": (sources.FASHION_CLASSES, 1, (28, 28)),
    "cifar10": (CIFAR10_CLASSES, 3, (32, 32)),
}


class TensorImages(Dataset):
    """uint8 images (N, C, H, W) and labels (N,). `__getitems__` reads a whole batch with one indexing
    operation (use `collate_fn=keep_batch`); `transform` (uint8 (C, H, W) -> same) then runs per image."""

    def __init__(self, images: Tensor, labels: Tensor, transform: Any = None) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        images, labels = self.__getitems__([i])
        return images[0], labels[0]

    def __getitems__(self, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        index = torch.as_tensor(indices)
        images = self.images[index]
        if self.transform is not None:
            images = torch.stack([self.transform(image) for image in images])
        return images, self.labels[index]


def keep_batch(batch: Any) -> Any:
    """collate_fn of TensorImages: its `__getitems__` already returns the batch."""
    return batch


class FileImages(Dataset):
    """Image files read as uint8 (channels, *size); item i is (image, label), or (image,) without labels.
    convert: convert colour mode and size (else a mismatch is an error, see `sources.read_image`)."""

    def __init__(
        self, files: Sequence, labels: Tensor | None, channels: int, size: tuple[int, int], convert: bool, transform: Any = None
    ) -> None:
        self.files, self.labels, self.channels, self.size = list(files), labels, channels, size
        self.convert, self.transform = convert, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Tensor, ...]:
        image = sources.read_image(self.files[i], self.channels, self.size, self.convert)
        if self.transform is not None:
            image = self.transform(image)
        return (image,) if self.labels is None else (image, self.labels[i])


class ImageDataModule(L.LightningDataModule):
    """Image classification data.

    Args:
        name: digits (offline default), fashion_mnist, cifar10, cifar100 or folder (see `apps.vision.sources`).
        path: where the data set is (a directory); download: let torchvision fetch it (fashion_mnist into
            cache_dir, cifar into path).
        val_size: validation images taken from the training set: a fraction (< 1) or a count.
        batch_size: training batch; eval_batch_size: validation, test and predict batch (None: batch_size).
        img_size, channels: for folder only (images are converted and resized to them); the other sets have
            their own.
        mean, std: per-channel normalisation (0..1 scale); None: measured on the training split (folder:
            ImageNet's for RGB, 0.5 for grayscale).
        augment: BatchAugment options {crop_padding, hflip, random_erasing}; randaugment: timm config string
            or None.
        predict_path: an image file or a directory of PNG/JPEG files for `predict`.
        convert: convert predict images to the model's colour mode and size instead of failing.
        split_seed: seed of the train/validation split.

    After `setup()`: classes, num_classes, channels, img_size (height, width), mean and std (float32 (C,)).
    state_dict() carries those, so a checkpoint predicts without the training data.
    """

    def __init__(
        self,
        name: str = "digits",
        path: str | None = None,
        download: bool = False,
        cache_dir: str = "data_cache",
        val_size: float = 0.1,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        img_size: int | None = None,
        channels: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        augment: Mapping[str, Any] | None = None,
        randaugment: str | None = None,
        predict_path: str | None = None,
        convert: bool = False,
        split_seed: int = 0,
    ) -> None:
        super().__init__()
        self.name = sources.check_name(name)
        if val_size <= 0:
            raise ValueError(f"data.val_size must be > 0 (a fraction < 1 or a count), got {val_size}")
        if channels not in (None, 1, 3):
            raise ValueError(f"data.channels must be 1 (grayscale) or 3 (RGB), got {channels}")
        if (img_size is not None or channels is not None) and name != "folder":
            raise ValueError(f"data.img_size and data.channels are for data=folder; {name} has its own")
        self.path, self.download, self.cache_dir, self.val_size = path, download, str(Path(cache_dir).expanduser()), val_size
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.pin_memory, self.split_seed = num_workers, pin_memory, split_seed
        self.folder_shape = (channels or 3, tuple(to_2tuple(img_size or 224)))
        self.user_mean, self.user_std = mean, std
        self.batch_augment = BatchAugment(**dict(augment or {}))
        self.randaugment, self.predict_path, self.convert = randaugment, predict_path, convert
        self.classes: list[str] | None = None
        self.channels: int | None = None
        self.img_size: tuple[int, int] | None = None
        self.mean: Tensor | None = None
        self.std: Tensor | None = None
        self.splits: dict[str, Dataset] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def setup(self, stage: str | None = None) -> None:
        """Load the data once (predict: only what the model's shape needs) and fix mean and std."""
        if stage == "predict":
            if self.classes is None:
                self._describe()
            return
        if self.splits is None:
            self._load()

    def _describe(self) -> None:
        """classes, channels and img_size without reading the images where they are known."""
        if self.name in KNOWN:
            classes, self.channels, self.img_size = KNOWN[self.name]
            self.classes = list(classes)
        elif self.name == "folder":
            self.classes = sources.folder_classes(self.path)[1]
            self.channels, self.img_size = self.folder_shape
        else:
            self._load()
        self._set_normalisation(None)

    def _load(self) -> None:
        if self.name == "folder":
            files, classes = sources.load_folder(self.path)
            channels, size = self.folder_shape
            train = FileImages(files["train"].files, files["train"].labels, channels, size, convert=True)
            test = FileImages(files["test"].files, files["test"].labels, channels, size, convert=True)
            labels, train_images = files["train"].labels, None
        else:
            if self.name == "digits":
                sets, classes = sources.load_digits(), KNOWN["digits"][0]
            elif self.name == "fashion_mnist":
                sets, classes = sources.load_fashion_mnist(self.path, self.download, self.cache_dir), sources.FASHION_CLASSES
            else:
                sets, classes = sources.load_cifar(self.name, self.path, self.download)
            channels, size = sets["train"].images.shape[1], tuple(sets["train"].images.shape[2:])
            train, test = TensorImages(sets["train"].images, sets["train"].labels), TensorImages(sets["test"].images, sets["test"].labels)
            labels, train_images = sets["train"].labels, sets["train"].images
        self._check_restored(list(classes), channels, size, from_checkpoint=False)
        self.classes, self.channels, self.img_size = list(classes), channels, size
        n_val = int(round(self.val_size * len(labels))) if self.val_size < 1 else int(self.val_size)
        if not 0 < n_val < len(labels):
            raise ValueError(f"data.val_size={self.val_size} leaves no training or no validation images out of {len(labels)}")
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.split_seed))
        train_index, val_index = order[n_val:], order[:n_val]
        self._set_normalisation(None if train_images is None else train_images[train_index])
        transform = RandAugment(self.randaugment, tuple(self.mean.tolist())) if self.randaugment else None
        self.splits = {
            "train": subset(train, train_index, transform),
            "val": subset(train, val_index, None),
            "test": test,
        }

    def _set_normalisation(self, train_images: Tensor | None) -> None:
        """mean and std: the given ones, those of `train_images` (uint8 (N, C, H, W)), or the defaults."""
        if self.mean is not None:  # restored from a checkpoint
            return
        if self.user_mean is not None and self.user_std is not None:
            mean, std = torch.tensor(self.user_mean), torch.tensor(self.user_std)
        elif train_images is not None:
            mean, std = channel_statistics(train_images)
        elif self.channels == 3:
            mean, std = torch.tensor(IMAGENET_DEFAULT_MEAN), torch.tensor(IMAGENET_DEFAULT_STD)
        else:
            mean, std = torch.full((self.channels,), 0.5), torch.full((self.channels,), 0.5)
        if mean.shape != (self.channels,) or std.shape != (self.channels,) or (std <= 0).any():
            raise ValueError(f"data.mean and data.std need {self.channels} values each (std > 0), got {mean.tolist()}, {std.tolist()}")
        self.mean, self.std = mean.float(), std.float()

    def _check_restored(self, classes: list[str], channels: int, size: tuple[int, int], from_checkpoint: bool) -> None:
        """ValueError when a checkpoint's data description and the data's differ (both known)."""
        if self.classes is None:
            return
        mine, theirs = (len(self.classes), self.channels, tuple(self.img_size)), (len(classes), channels, tuple(size))
        if mine != theirs:
            checkpoint, data = (theirs, mine) if from_checkpoint else (mine, theirs)
            raise ValueError(
                f"the checkpoint was trained on {describe(*checkpoint)}, the data has {describe(*data)}; "
                "use the data set it was trained on"
            )

    def _loader(self, dataset: Dataset, shuffle: bool, batch_size: int) -> DataLoader:
        return DataLoader(
            dataset, batch_size=batch_size, shuffle=shuffle, drop_last=shuffle, num_workers=self.num_workers,
            pin_memory=self.pin_memory, persistent_workers=self.num_workers > 0,
            collate_fn=keep_batch if isinstance(dataset, TensorImages) else None,
        )

    def _split(self, split: str) -> Dataset:
        if self.splits is None:
            raise RuntimeError("call setup() before asking for a dataloader")
        return self.splits[split]

    def train_dataloader(self) -> DataLoader:
        return self._loader(self._split("train"), True, self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._split("val"), False, self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self._split("test"), False, self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        """[images] batches of the files of `predict_path`, in `predict_files()` order."""
        return self._loader(FileImages(self.predict_files(), None, self.channels, self.img_size, self.convert), False, self.eval_batch_size)

    def predict_files(self) -> list:
        if not self.predict_path:
            raise ValueError("predict needs images: pass data.predict_path=FILE_OR_DIR (PNG or JPEG files)")
        return sources.image_files(self.predict_path)

    def on_after_batch_transfer(self, batch: Sequence[Tensor], dataloader_idx: int) -> list[Tensor]:
        """uint8 images -> normalised float32, augmented while training; labels unchanged."""
        images, *rest = batch
        if self.trainer is not None and self.trainer.training:
            return [self.batch_augment(images, self.mean, self.std), *rest]
        return [normalize(images, self.mean, self.std), *rest]

    def state_dict(self) -> dict[str, Any]:
        """classes, channels, img_size, mean and std ({} before setup); loads with weights_only=True."""
        if self.mean is None:
            return {}
        return {"classes": list(self.classes), "channels": self.channels, "img_size": list(self.img_size),
                "mean": self.mean.clone(), "std": self.std.clone()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the data description and normalisation of a checkpoint."""
        self._check_restored(list(state_dict["classes"]), state_dict["channels"], tuple(state_dict["img_size"]), from_checkpoint=True)
        self.classes, self.channels = list(state_dict["classes"]), state_dict["channels"]
        self.img_size = tuple(state_dict["img_size"])
        self.mean, self.std = state_dict["mean"].float().clone(), state_dict["std"].float().clone()


def channel_statistics(images: Tensor, chunk: int = 4096) -> tuple[Tensor, Tensor]:
    """Per-channel mean and (population) std of uint8 images (N, C, H, W) on the 0..1 scale, float64 (C,),
    summed over chunks of images so that no float copy of the whole set is made."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for part in images.split(chunk):
        pixels = part.transpose(0, 1).flatten(1).double() / 255  # [C, chunk*H*W]
        total += pixels.sum(1)
        squares += pixels.square().sum(1)
    count = images.numel() // images.shape[1]
    mean = total / count
    return mean, (squares / count - mean.square()).clamp_min(0).sqrt()


def describe(num_classes: int, channels: int, size: tuple[int, int]) -> str:
    """"10 classes of 1x28x28 images"."""
    return f"{num_classes} classes of {channels}x{size[0]}x{size[1]} images"


def subset(dataset: Dataset, index: Tensor, transform: Any) -> Dataset:
    """The images of `dataset` at `index` (a new TensorImages or FileImages), with `transform`."""
    if isinstance(dataset, TensorImages):
        return TensorImages(dataset.images[index], dataset.labels[index], transform)
    files = [dataset.files[i] for i in index.tolist()]
    return FileImages(files, dataset.labels[index], dataset.channels, dataset.size, dataset.convert, transform)
