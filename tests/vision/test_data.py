"""Vision data: sources (digits, Fashion-MNIST IDX, image folders and files), splits, normalisation, augmentation."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from apps.vision import sources
from apps.vision.augment import BatchAugment, RandAugment, normalize, random_crop, random_flip
from apps.vision.data import ImageDataModule, channel_statistics

FASHION = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "vision" / "fashion-mnist"
needs_fashion = pytest.mark.skipif(not (FASHION / "train-images-idx3-ubyte.gz").is_file(), reason=f"no Fashion-MNIST under {FASHION}")


def test_digits_splits_batches_and_normalisation():
    data = ImageDataModule("digits", val_size=0.1, batch_size=32)
    data.setup()
    assert data.classes == [str(d) for d in range(10)] and data.channels == 1 and data.img_size == (8, 8)
    sizes = {split: len(dataset) for split, dataset in data.splits.items()}
    assert sizes == {"train": 1294, "val": 144, "test": 359}  # 1797 - 359 test, 10% of the rest for validation
    images, labels = next(iter(data.train_dataloader()))
    assert images.shape == (32, 1, 8, 8) and images.dtype == torch.uint8 and labels.dtype == torch.int64
    normalised, _ = data.on_after_batch_transfer([images, labels], 0)  # no trainer: normalise only
    torch.testing.assert_close(normalised, (images / 255 - data.mean.view(1, -1, 1, 1)) / data.std.view(1, -1, 1, 1))
    pixels = torch.cat([batch[0] for batch in data.train_dataloader()]).float() / 255
    assert abs(pixels.mean().item() - data.mean.item()) < 0.02  # the training split's statistics (less the dropped batch)
    assert len(data.train_dataloader()) == 1294 // 32 and len(data.test_dataloader()) == -(-359 // 32)


def test_state_dict_carries_classes_and_normalisation():
    data = ImageDataModule("digits")
    data.setup()
    restored = ImageDataModule("digits")
    restored.load_state_dict(data.state_dict())
    assert restored.classes == data.classes and restored.img_size == (8, 8)
    torch.testing.assert_close(restored.std, data.std)
    predicting = ImageDataModule("fashion_mnist", path="/nonexistent")
    predicting.setup("predict")  # predicting needs no training data
    assert predicting.num_classes == 10 and predicting.img_size == (28, 28)
    with pytest.raises(ValueError, match="trained on 10 classes of 1x8x8 images, the data has 10 classes of 1x28x28 images"):
        predicting.load_state_dict(data.state_dict())


@needs_fashion
def test_fashion_mnist_from_the_idx_files():
    data = ImageDataModule("fashion_mnist", path=str(FASHION), val_size=5000)
    data.setup()
    assert {split: len(d) for split, d in data.splits.items()} == {"train": 55000, "val": 5000, "test": 10000}
    assert data.classes[0] == "T-shirt/top" and data.img_size == (28, 28)
    assert 0.27 < data.mean.item() < 0.30 and 0.34 < data.std.item() < 0.37
    test = data.splits["test"]
    assert torch.bincount(test.labels).tolist() == [1000] * 10


def test_missing_and_corrupt_idx_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist; pass data.path=DIR .* or data.download=true"):
        ImageDataModule("fashion_mnist", path=str(tmp_path / "nowhere")).setup()
    with pytest.raises(FileNotFoundError, match="no Fashion-MNIST file train-images-idx3-ubyte"):
        ImageDataModule("fashion_mnist", path=str(tmp_path)).setup()
    header = bytes([0, 0, 8, 3]) + (10).to_bytes(4, "big") + (28).to_bytes(4, "big") + (28).to_bytes(4, "big")
    (tmp_path / "short.gz").write_bytes(gzip.compress(header + bytes(100)))
    with pytest.raises(ValueError, match="truncated"):
        sources.read_idx(tmp_path / "short.gz")
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="bad magic number"):
        sources.read_idx(tmp_path / "bad")


def test_bad_data_arguments_are_named():
    with pytest.raises(ValueError, match="data.name='mnist' is not one of"):
        ImageDataModule("mnist")
    with pytest.raises(ValueError, match="val_size must be > 0"):
        ImageDataModule("digits", val_size=0)
    with pytest.raises(ValueError, match="for data=folder"):
        ImageDataModule("digits", img_size=32)
    with pytest.raises(ValueError, match="leaves no training"):
        ImageDataModule("digits", val_size=5000).setup()
    with pytest.raises(ValueError, match="needs data.path"):
        ImageDataModule("cifar10").setup()


def write_png(path: Path, size: tuple[int, int], mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = 3 if mode == "RGB" else 1
    pixels = np.random.default_rng(0).integers(0, 255, (size[1], size[0], channels), dtype=np.uint8)
    Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode).save(path)
    return path


def test_image_folder(tmp_path):
    for split, count in (("train", 6), ("val", 2)):
        for name in ("cat", "dog"):
            for i in range(count):
                write_png(tmp_path / split / name / f"{i}.png", (20, 12))
    data = ImageDataModule("folder", path=str(tmp_path), img_size=16, channels=3, val_size=2, batch_size=4)
    data.setup()
    assert data.classes == ["cat", "dog"] and len(data.splits["test"]) == 4 and len(data.splits["val"]) == 2
    images, labels = next(iter(data.train_dataloader()))
    assert images.shape == (4, 3, 16, 16) and images.dtype == torch.uint8  # resized to img_size
    (tmp_path / "train" / "dog" / "broken.png").write_bytes(b"not a png")
    data = ImageDataModule("folder", path=str(tmp_path), img_size=16, channels=3, val_size=2)
    data.setup()
    with pytest.raises(ValueError, match="cannot read image .*broken.png"):
        [data.splits[split][i] for split in ("train", "val") for i in range(len(data.splits[split]))]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageDataModule("folder", path=str(tmp_path / "missing")).setup()


def test_read_image_checks_colour_and_size(tmp_path):
    rgb = write_png(tmp_path / "rgb.png", (28, 28))
    gray = write_png(tmp_path / "gray.png", (28, 28), "L")
    assert sources.read_image(gray, 1, (28, 28), convert=False).shape == (1, 28, 28)
    with pytest.raises(ValueError, match="is a RGB image .* takes grayscale images.*data.convert=true"):
        sources.read_image(rgb, 1, (28, 28), convert=False)
    with pytest.raises(ValueError, match="is 28x28 .* takes 32x32"):
        sources.read_image(gray, 1, (32, 32), convert=False)
    assert sources.read_image(rgb, 1, (32, 32), convert=True).shape == (1, 32, 32)
    assert sources.image_files(tmp_path) == [gray, rgb]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no PNG/JPEG files"):
        sources.image_files(empty)


def test_batch_augmentations():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (16, 1, 6, 6), dtype=torch.uint8)
    assert torch.equal(random_crop(images, 0), images)
    shifted = random_crop(images, 2)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for image, out in zip(padded, shifted):  # every output is some 6x6 window of its padded image
        windows = image.unfold(1, 6, 1).unfold(2, 6, 1)  # [C, 5, 5, 6, 6]
        assert any(torch.equal(windows[:, i, j], out) for i in range(5) for j in range(5))
    flipped = random_flip(images)
    assert all(torch.equal(f, i) or torch.equal(f, i.flip(-1)) for f, i in zip(flipped, images))
    mean, std = torch.tensor([0.5]), torch.tensor([0.25])
    out = BatchAugment(crop_padding=1, hflip=True, random_erasing=1.0)(images, mean, std)
    assert out.dtype == torch.float32 and out.shape == images.shape
    assert not torch.equal(out, normalize(images, mean, std))
    with pytest.raises(ValueError, match="crop_padding >= 0"):
        BatchAugment(crop_padding=-1)


def test_randaugment_keeps_shape_and_type():
    image = torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8)
    out = RandAugment("rand-m9-mstd0.5", (0.3,))(image)
    assert out.shape == (1, 28, 28) and out.dtype == torch.uint8
    data = ImageDataModule("digits", randaugment="rand-m9-mstd0.5", batch_size=8)
    data.setup()
    images, _ = next(iter(data.train_dataloader()))
    assert images.shape == (8, 1, 8, 8) and images.dtype == torch.uint8


def test_channel_statistics_match_the_direct_computation():
    images = torch.randint(0, 256, (37, 3, 5, 4), dtype=torch.uint8)
    mean, std = channel_statistics(images, chunk=8)
    pixels = images.transpose(0, 1).flatten(1).double() / 255
    torch.testing.assert_close(mean, pixels.mean(1))
    torch.testing.assert_close(std, pixels.std(1, unbiased=False))
