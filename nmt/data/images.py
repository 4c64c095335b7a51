"""Image reading and the one preprocessing shared by training and inference.

Captioning models break quietly when training and inference prepare images
differently, so both go through the same two steps, in this order:

1. :func:`to_pixels`: RGB, shorter side resized to ``size`` (bicubic), centre crop
   to ``size`` x ``size``, as uint8 ``(size, size, 3)``. Training caches this output.
2. :func:`normalize`: uint8 pixels to float ``(3, H, W)`` in [0, 1], then
   ``(x - mean) / std`` per channel. Training applies it per batch (on the device);
   inference applies it to each image, via :func:`preprocess`.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

from nmt.core.errors import DataError

IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif",
                                   ".tiff")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# What PIL raises for files that are not images, or broken ones.
_READ_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error,
                Image.DecompressionBombError)


def to_pixels(image: Image.Image, size: int) -> np.ndarray:
    """RGB, shorter side resized to ``size`` (bicubic), centre crop: uint8 ``(size, size, 3)``.

    EXIF orientation is applied first, so a photo is seen the way viewers show it.
    """
    if size < 1:
        raise ValueError(f"image size must be positive, got {size}")
    image = ImageOps.exif_transpose(image).convert("RGB")
    w, h = image.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), Image.Resampling.BICUBIC, reducing_gap=3.0)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    image = image.crop((left, top, left + size, top + size))
    return np.asarray(image, dtype=np.uint8).copy()


def read_pixels(path: str | os.PathLike, size: int) -> np.ndarray:
    """:func:`to_pixels` of an image file; DataError naming the file if it cannot be read."""
    try:
        with Image.open(path) as image:
            image.load()
            return to_pixels(image, size)
    except _READ_ERRORS as e:
        raise DataError(f"{path}: not a readable image ({_reason(e)})") from None


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def normalize(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float]
              ) -> torch.Tensor:
    """uint8 ``(H, W, 3)`` or ``(B, H, W, 3)`` to float32 ``(3, H, W)`` or ``(B, 3, H, W)``.

    Values are scaled to [0, 1], then each channel c becomes ``(x - mean[c]) / std[c]``.
    """
    if pixels.dtype != torch.uint8 or pixels.dim() not in (3, 4) or pixels.shape[-1] != 3:
        raise ValueError(f"expected uint8 pixels (H, W, 3) or (B, H, W, 3), got "
                         f"{pixels.dtype} {tuple(pixels.shape)}")
    x = pixels.movedim(-1, -3).contiguous().to(torch.float32).div_(255.0)  # (B?, 3, H, W)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=pixels.device).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=pixels.device).view(3, 1, 1)
    return x.sub_(mean_t).div_(std_t)


def preprocess(image: Image.Image, size: int, mean: Sequence[float], std: Sequence[float]
               ) -> torch.Tensor:
    """One image as the model sees it: float32 ``(3, size, size)``."""
    return normalize(torch.from_numpy(to_pixels(image, size)), mean, std)
