"""The image encoder of "show, attend and tell" (Xu et al., 2015): a CNN's feature grid.

The memory the decoder attends over is the backbone's last feature map, one vector per
grid cell, flattened row-major: cell ``i`` is row ``i // w``, column ``i % w`` of the
(h, w) grid (``grid_shape``), i.e. the image region whose centre is at about
((row + 0.5) * H / h, (col + 0.5) * W / w). The decoder's first state comes from the
mean of the cells (the paper's "mean annotation vector").

Backbones (nmt.model.backbones): "small", a CNN trained from scratch for small images
(8x8 grid at 64x64), and torchvision's ResNets without their pooling and classifier
(7x7 at 224x224).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from typing_extensions import Self

from nmt.model.backbones import BACKBONES, SMALL_CHANNELS, SMALL_STRIDES, resnet, small_cnn
from nmt.model.cells import State
from nmt.model.dropout import Dropout
from nmt.model.encoder import Encoder

# -- the encoder ------------------------------------------------------------------------------


class ImageEncoder(Encoder):
    """CNN feature grid as memory (B, S = h * w, C); final state: the cells' mean (B, C).

    ``src`` is images (B, 3, H, W), float and normalised, or features (B, S, C) that
    ``features`` computed beforehand (a frozen backbone's, cached by the data). The
    memory is the raw grid (``output_size`` = C): attention projects its own keys.
    ``freeze``: the backbone gets no gradients and stays in eval mode (BatchNorm
    statistics never change), whatever ``train()`` says.

    ``positions_at``: an image size; a learned embedding per cell of its grid is then
    added to the memory (after any feature cache), which tells attention where a cell
    is: a CNN's features barely do, and "the left one", "the one above" need it.
    None: no positions.
    """

    def __init__(self, backbone: str = "small", channels: Sequence[int] = SMALL_CHANNELS,
                 pretrained: str | None = None, freeze: bool = False,
                 grid: int | Sequence[int] | None = None, dropout: float = 0.0,
                 positions_at: int | None = None) -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {backbone!r}; valid choices: "
                             f"{', '.join(BACKBONES)}")
        if backbone == "small":
            if pretrained is not None:
                raise ValueError(f"pretrained={pretrained} needs a ResNet backbone; "
                                 f"backbone=small is trained from scratch")
            self.backbone: nn.Sequential = small_cnn(channels)
            size = int(channels[-1])
        else:
            self.backbone, size = resnet(backbone, pretrained)
        self.pool = (nn.AdaptiveAvgPool2d(grid if isinstance(grid, int) else tuple(grid))
                     if grid is not None else None)
        self.dropout = Dropout(dropout)
        self._feature_size = size
        self.output_size = size
        self._frozen = freeze
        self._grid_shapes: dict[int, tuple[int, int]] = {}
        if freeze:
            self.backbone.requires_grad_(False)
            self.backbone.eval()
        self.position: nn.Parameter | None = None
        if positions_at is not None:
            rows, cols = self.grid_shape(positions_at)
            self.position = nn.Parameter(torch.randn(rows * cols, size) * 0.1)

    @property
    def feature_size(self) -> int:
        """C, the channels of the feature grid."""
        return self._feature_size

    @property
    def frozen(self) -> bool:
        return self._frozen

    def backbone_parameters(self) -> list[nn.Parameter]:
        """The CNN's parameters (fine-tuned with their own learning rate, encoder_lr)."""
        return list(self.backbone.parameters())

    def train(self, mode: bool = True) -> Self:
        """As nn.Module.train, but a frozen backbone stays in eval mode."""
        super().train(mode)
        if self._frozen:
            self.backbone.eval()
        return self

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, h * w, C), cells row-major (cell = row * w + col); no dropout."""
        _check_images(images)
        with torch.no_grad() if self._frozen else contextlib.nullcontext():
            grid = self.backbone(images)  # (B, C, h, w)
            if self.pool is not None:
                grid = self.pool(grid)  # (B, C, *grid)
        return grid.flatten(2).transpose(1, 2)  # (B, h * w, C)

    def grid_shape(self, image_size: int) -> tuple[int, int]:
        """(h, w) of the feature grid for square images of ``image_size`` pixels."""
        if image_size not in self._grid_shapes:
            param = next(self.backbone.parameters())
            training = self.backbone.training
            self.backbone.eval()  # a dummy batch must not move BatchNorm statistics
            try:
                with torch.no_grad():
                    dummy = param.new_zeros(1, 3, image_size, image_size)
                    grid = self.backbone(dummy)
                    grid = self.pool(grid) if self.pool is not None else grid
            finally:
                self.backbone.train(training)
            self._grid_shapes[image_size] = (grid.size(2), grid.size(3))
        return self._grid_shapes[image_size]

    def forward(self, src: torch.Tensor, src_lengths: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, State]:
        """Images (B, 3, H, W) or features (B, S, C), lengths (B,) -> memory (B, S, C),
        mask (B, S) all True, final (B, C): the mean of the features, before dropout
        (as the text encoder's final state, which is not dropped out either)."""
        if src.dim() == 4:
            feats = self.features(src)  # (B, S, C)
        elif src.dim() == 3:
            if src.size(2) != self.feature_size:
                raise ValueError(f"features must be (B, S, {self.feature_size}), got "
                                 f"{tuple(src.shape)}")
            feats = src
        else:
            raise ValueError(f"the image encoder takes images (B, 3, H, W) or features "
                             f"(B, S, C), got a tensor of shape {tuple(src.shape)}")
        if src_lengths.shape != (src.size(0),):
            raise ValueError(f"src_lengths must be ({src.size(0)},), got "
                             f"{tuple(src_lengths.shape)}")
        mask = feats.new_ones(feats.shape[:2], dtype=torch.bool)  # (B, S): every cell is real
        memory = feats
        if self.position is not None:
            if feats.size(1) != self.position.size(0):
                raise ValueError(f"the feature grid has {feats.size(1)} cells, the model "
                                 f"knows positions for {self.position.size(0)}: give images "
                                 "of the model's image_size")
            memory = feats + self.position
        return self.dropout(memory), mask, feats.mean(dim=1)


def _check_images(images: torch.Tensor) -> None:
    if images.dim() != 4 or images.size(1) != 3:
        raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images must be float and normalised, got {images.dtype}")


# -- options and the registry's builder -------------------------------------------------------

# The image encoder's options (model.*). channels: the small CNN's only; pretrained: null,
# "imagenet" or a .pth state_dict file (ResNets); grid: null, n or [h, w] (average-pooled
# feature grid); image_size/mean/std: the preprocessing, recorded so that inference
# preprocesses as training did; encoder_lr: the backbone's own learning rate (null: optim's).
IMAGE_DEFAULTS: dict[str, Any] = {
    "backbone": "small", "channels": list(SMALL_CHANNELS), "pretrained": None,
    "freeze": False, "grid": None, "image_size": 64,
    "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
    "encoder_lr": None, "positions": True,
}


def _positive_ints(value: Any, count: int) -> bool:
    return (isinstance(value, list) and len(value) == count
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value))


def _numbers(value: Any, count: int) -> bool:
    return (isinstance(value, list) and len(value) == count
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value))


def check_image_options(config: dict[str, Any]) -> None:
    """One-line ValueErrors for the image encoder's options in a resolved model config."""
    c = config
    if c["backbone"] not in BACKBONES:
        raise ValueError(f"unknown backbone {c['backbone']!r}; valid choices: "
                         f"{', '.join(BACKBONES)}")
    if not _positive_ints(c["channels"], len(SMALL_STRIDES)):
        raise ValueError(f"channels must be {len(SMALL_STRIDES)} positive integers, "
                         f"got {c['channels']!r}")
    if c["pretrained"] is not None and (not isinstance(c["pretrained"], str)
                                        or not c["pretrained"]):
        raise ValueError(f"pretrained must be null, 'imagenet' or a state_dict file, got "
                         f"{c['pretrained']!r}")
    if c["pretrained"] is not None and c["backbone"] == "small":
        raise ValueError(f"pretrained={c['pretrained']} needs a ResNet backbone; "
                         f"backbone=small is trained from scratch")
    if not isinstance(c["freeze"], bool):
        raise ValueError(f"freeze must be true or false, got {c['freeze']!r}")
    grid = c["grid"]
    if grid is not None and not (_positive_ints([grid], 1) or _positive_ints(grid, 2)):
        raise ValueError(f"grid must be null, a positive integer or [h, w], got {grid!r}")
    if not _positive_ints([c["image_size"]], 1):
        raise ValueError(f"image_size must be a positive integer, got {c['image_size']!r}")
    for key in ("image_mean", "image_std"):
        if not _numbers(c[key], 3):
            raise ValueError(f"{key} must be 3 numbers (R, G, B), got {c[key]!r}")
    if any(s <= 0 for s in c["image_std"]):
        raise ValueError(f"image_std must be positive, got {c['image_std']!r}")
    if not isinstance(c["positions"], bool):
        raise ValueError(f"positions must be true or false, got {c['positions']!r}")
    lr = c["encoder_lr"]
    if lr is not None and (not _numbers([lr], 1) or lr <= 0):
        raise ValueError(f"encoder_lr must be null or a positive number, got {lr!r}")


def build_image_encoder(config: dict[str, Any], src_vocab_size: int, pad_id: int,
                        shared: nn.Embedding | None) -> ImageEncoder:
    """The registry's builder (see nmt.model.registry.register_encoder); images have no
    vocabulary, so ``src_vocab_size`` and ``pad_id`` are ignored."""
    if shared is not None:
        raise ValueError("tie_src_tgt: the image encoder has no token embeddings to share")
    check_image_options(config)
    return ImageEncoder(config["backbone"], config["channels"], config["pretrained"],
                        config["freeze"], config["grid"], config["dropout"],
                        config["image_size"] if config["positions"] else None)
