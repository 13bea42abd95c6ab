"""Augmentations: cheap whole-batch ones on the training device, and timm's RandAugment per image.

`BatchAugment` runs in `ImageDataModule.on_after_batch_transfer` on a uint8 batch (B, C, H, W) already on
the GPU: random crop with zero padding (a random shift of up to `crop_padding` pixels), horizontal flip,
then normalisation with the data set's mean and std, then timm's RandomErasing on the normalised batch.
RandAugment (a PIL transform, timm's config string such as "rand-m9-mstd0.5-inc1") runs per image in the
data loader, and needs data.num_workers > 0 to keep up. Mixup, CutMix and label smoothing change the
targets and live in the task (`apps.vision.task`).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from timm.data import rand_augment_transform
from timm.data.random_erasing import RandomErasing
from torch import Tensor


def normalize(images: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """uint8 (B, C, H, W) -> float32 (x / 255 - mean) / std, mean and std (C,)."""
    images = images.float().div_(255)
    return (images - mean.to(images.device).view(1, -1, 1, 1)) / std.to(images.device).view(1, -1, 1, 1)


def random_crop(images: Tensor, padding: int) -> Tensor:
    """Each image (B, C, H, W) shifted by its own random offset in [-padding, padding], zero filled."""
    B, _, H, W = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    top = torch.randint(0, 2 * padding + 1, (B, 1), device=images.device) + torch.arange(H, device=images.device)
    left = torch.randint(0, 2 * padding + 1, (B, 1), device=images.device) + torch.arange(W, device=images.device)
    batch = torch.arange(B, device=images.device).view(B, 1, 1)
    return padded.permute(0, 2, 3, 1)[batch, top.unsqueeze(2), left.unsqueeze(1)].permute(0, 3, 1, 2)  # [B, C, H, W]


def random_flip(images: Tensor) -> Tensor:
    """Each image (B, C, H, W) mirrored left-right with probability 1/2."""
    flip = torch.rand(len(images), device=images.device) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)


class BatchAugment:
    """Training-batch augmentation on the device (see module docstring).

    crop_padding: largest shift in pixels (0: none). hflip: random left-right flips.
    random_erasing: probability per image of erasing a random rectangle with per-pixel noise (0: none).
    """

    def __init__(self, crop_padding: int = 0, hflip: bool = False, random_erasing: float = 0.0) -> None:
        if crop_padding < 0 or not 0.0 <= random_erasing <= 1.0:
            raise ValueError(
                f"need crop_padding >= 0 and 0 <= random_erasing <= 1, got {crop_padding}, {random_erasing}; "
                "set data.augment.crop_padding / data.augment.random_erasing"
            )
        self.crop_padding, self.hflip, self.random_erasing = crop_padding, hflip, random_erasing

    def __call__(self, images: Tensor, mean: Tensor, std: Tensor) -> Tensor:
        """uint8 (B, C, H, W) -> augmented, normalised float32 (B, C, H, W)."""
        if self.crop_padding:
            images = random_crop(images, self.crop_padding)
        if self.hflip:
            images = random_flip(images)
        images = normalize(images, mean, std)
        if self.random_erasing:
            images = RandomErasing(self.random_erasing, mode="pixel", device=images.device)(images)
        return images


class RandAugment:
    """timm's RandAugment from its config string (e.g. "rand-m9-mstd0.5-inc1") as uint8 (C, H, W) -> uint8 (C, H, W).
    Grayscale images go through it as RGB and come back grayscale; `mean` (0..1 per channel) fills new pixels."""

    def __init__(self, config: str, mean: tuple[float, ...]) -> None:
        fill = tuple(round(255 * m) for m in mean)
        self.transform = rand_augment_transform(config, {"img_mean": fill if len(fill) == 3 else fill * 3})

    def __call__(self, image: Tensor) -> Tensor:
        mode = "L" if image.shape[0] == 1 else "RGB"
        pil = Image.fromarray(image.permute(1, 2, 0).numpy().squeeze(-1) if mode == "L" else image.permute(1, 2, 0).numpy())
        out = np.asarray(self.transform(pil.convert("RGB")).convert(mode))
        return torch.from_numpy(out.copy()).reshape(image.shape[1], image.shape[2], -1).permute(2, 0, 1)
