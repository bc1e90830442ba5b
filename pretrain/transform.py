"""Image preprocessing with PIL + torch only (torchvision does not import beside torch 2.13 CPU).

Training: a random square crop of the image (CLIP §2.5: "a random square crop from resized
images is the only data augmentation"), i.e. RandomResizedCrop with open_clip's default scale
(0.9, 1.0) and aspect ratio (3/4, 4/3), bicubic. Evaluation: resize the short side, centre crop.
Both convert to RGB and normalise with CLIP's mean/std.
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch
from PIL import Image

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def to_normalized_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> (3, H, W) float32, CLIP-normalised."""
    x = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0
    mean = torch.tensor(OPENAI_MEAN).view(3, 1, 1)
    std = torch.tensor(OPENAI_STD).view(3, 1, 1)
    return (x - mean) / std


def random_crop_box(
    width: int, height: int, rng: random.Random, scale=(0.9, 1.0), ratio=(3 / 4, 4 / 3)
) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box sampler: (left, top, right, bottom) covering a
    random ``scale`` fraction of the area with a log-uniform aspect ratio; falls back to the
    largest centred crop within ``ratio`` after 10 failed tries."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left, top = rng.randint(0, width - w), rng.randint(0, height - h)
            return left, top, left + w, top + h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def center_crop_box(width: int, height: int) -> tuple[int, int, int, int]:
    """The largest centred square."""
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


class ImageTransform:
    """Callable: PIL image -> (3, size, size) tensor; ``train=True`` adds the random crop."""

    def __init__(self, size: int, train: bool, seed: int | None = None, scale=(0.9, 1.0)):
        self.size = size  # output side (pixels): the model's image_size
        self.train = train  # random resized crop (train) vs centre crop (eval)
        self.scale = scale  # area fraction range of the random crop
        self.rng = random.Random(seed)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = image.convert("RGB")
        if self.train:
            box = random_crop_box(image.width, image.height, self.rng, self.scale)
        else:
            box = center_crop_box(image.width, image.height)
        # crop + resize in one resampling step (box= crops in source coordinates)
        image = image.resize((self.size, self.size), Image.Resampling.BICUBIC, box=box)
        return to_normalized_tensor(image)
