"""CNN backbones of the image encoder: a small CNN trained from scratch, torchvision's
ResNets without pooling and classifier, and importing torchvision where its compiled
operators do not fit the installed torch.

torchvision is imported only when a ResNet is built (and by ``prepare_torchvision``,
which nmt/__init__.py calls so that lightning, which imports an installed torchvision,
keeps working), so translation never needs it.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import re
import sys
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

log = logging.getLogger(__name__)

SMALL_CHANNELS = (32, 64, 128, 128, 128)
SMALL_STRIDES = (1, 2, 2, 2, 1)  # 64x64 -> 8x8
# Downsampling by 2x2 convolutions of stride 2, without padding: each cell of the grid is
# centred on the 8x8 pixels it is named after. (3x3 convolutions of stride 2 with padding
# 1 centre cell c on pixel 8c, half a cell up and left of it: attention then looked
# half a cell off the shapes it named.) The last 3x3 lets a cell see its neighbours'
# pixels too (26 x 26 pixels in all): with a 1x1 instead, a cell sees little more than
# its own 8x8 pixels, and the shapes recipe learned slower and attended worse.
SMALL_KERNELS = (3, 2, 2, 2, 3)
RESNETS = {"resnet18": "ResNet18_Weights", "resnet34": "ResNet34_Weights",
           "resnet50": "ResNet50_Weights"}  # torchvision's weight enums
BACKBONES = ("small", *RESNETS)

# -- torchvision, imported on demand ----------------------------------------------------------

_MISSING_OP = re.compile(r"operator torchvision::(\w+) does not exist")
_MAX_PLACEHOLDERS = 16
# Placeholder schemas for torchvision's compiled ops; the Library must outlive the import.
_placeholders: torch.library.Library | None = None


def _forget_torchvision() -> None:
    """Drop a half-imported torchvision from sys.modules, so the next import starts afresh."""
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]


def import_torchvision(backbone: str = "resnet18") -> ModuleType:
    """torchvision, for its ResNets; a ValueError naming ``backbone`` when it is unusable.

    A torchvision wheel whose compiled ops cannot load beside this torch (e.g. one built
    for CUDA next to a CPU torch) fails on import with "operator torchvision::nms does not
    exist". Its models are plain Python, so each missing op gets a placeholder schema and
    the import is retried; the ops themselves (nms, roi_align, ...) then stay unusable.
    """
    global _placeholders
    defined: list[str] = []
    for _ in range(_MAX_PLACEHOLDERS + 1):
        try:
            tv = importlib.import_module("torchvision")
        except (ImportError, OSError, RuntimeError) as e:
            _forget_torchvision()
            match = _MISSING_OP.search(str(e)) if isinstance(e, RuntimeError) else None
            if match is None or match.group(1) in defined:
                reason = " ".join(f"{type(e).__name__}: {e}".split())
                raise ValueError(f"model.backbone={backbone} needs torchvision: {reason}"
                                 ) from None
            if _placeholders is None:
                _placeholders = torch.library.Library("torchvision", "DEF")
            _placeholders.define(f"{match.group(1)}(Tensor x) -> Tensor")
            defined.append(match.group(1))
            continue
        if defined:  # once per process: later imports find the module in sys.modules
            log.debug("torchvision's compiled ops are unavailable (%s); only its models "
                        "are used", ", ".join(defined))
        return tv
    _forget_torchvision()
    raise ValueError(f"model.backbone={backbone} needs torchvision: more than "
                     f"{_MAX_PLACEHOLDERS} of its compiled ops are missing")


def prepare_torchvision() -> None:
    """Import an installed torchvision through import_torchvision; call it before lightning.

    Lightning's torchmetrics imports torchvision whenever it is installed, with no
    placeholders of its own: without this, an unloadable torchvision breaks every
    import of lightning. Not installed: nothing to do; still unusable: left for the
    importer to report.
    """
    if "torchvision" in sys.modules or importlib.util.find_spec("torchvision") is None:
        return
    with contextlib.suppress(ValueError):
        import_torchvision()


# -- backbones --------------------------------------------------------------------------------


def small_cnn(channels: Sequence[int] = SMALL_CHANNELS) -> nn.Sequential:
    """Five conv + BatchNorm + ReLU blocks, kernels SMALL_KERNELS, strides SMALL_STRIDES:
    (B, 3, H, W) -> (B, channels[-1], H / 8, W / 8).

    BatchNorm learned far faster here than GroupNorm or no normalisation
    (docs/captioning.md); its running statistics lag behind a CNN trained from scratch,
    so nmt.training.callbacks.PreciseBatchNorm recomputes them before every validation.
    """
    if len(channels) != len(SMALL_STRIDES):
        raise ValueError(f"channels must be {len(SMALL_STRIDES)} positive integers, "
                         f"got {list(channels)!r}")
    layers: list[nn.Module] = []
    in_channels = 3
    for out_channels, stride, kernel in zip(channels, SMALL_STRIDES, SMALL_KERNELS,
                                            strict=True):
        padding = kernel // 2 if kernel % 2 else 0  # odd: size kept; even: halved, aligned
        layers += [nn.Conv2d(in_channels, out_channels, kernel, stride, padding, bias=False),
                   nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]
        in_channels = out_channels
    return nn.Sequential(*layers)


def load_state_dict_file(path: str) -> dict[str, torch.Tensor]:
    """A torchvision-format state_dict saved with torch.save; ValueError naming the path."""
    if not Path(path).is_file():
        raise ValueError(f"pretrained={path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and torch errors alike: the file is not usable
        reason = " ".join(f"{type(e).__name__}: {e}".split())[:200]
        raise ValueError(f"pretrained={path}: not a readable state_dict ({reason})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise ValueError(f"pretrained={path}: not a state_dict (a dict of tensors)")
    return state


def resnet(name: str, pretrained: str | None = None) -> tuple[nn.Sequential, int]:
    """torchvision's ResNet ``name`` up to its last block (no avgpool, no fc), and its
    channel count. Parameter names are torchvision's (conv1.weight, layer1.0...)."""
    tv = import_torchvision(name)
    weights = None
    if pretrained == "imagenet":
        weights = getattr(tv.models, RESNETS[name]).DEFAULT
    try:
        net = getattr(tv.models, name)(weights=weights)  # downloads to torch's cache
    except (OSError, RuntimeError) as e:  # urllib's errors are OSErrors
        reason = " ".join(str(e).split())[:200]
        raise ValueError(f"pretrained=imagenet: cannot get torchvision's {name} weights "
                         f"({reason})") from None
    channels = net.fc.in_features
    body = nn.Sequential(OrderedDict((k, m) for k, m in net.named_children()
                                     if k not in ("avgpool", "fc")))
    if pretrained not in (None, "imagenet"):
        state = {k: v for k, v in load_state_dict_file(pretrained).items()
                 if not k.startswith("fc.")}
        try:
            body.load_state_dict(state)
        except RuntimeError as e:
            reason = " ".join(str(e).split())[:200]
            raise ValueError(f"pretrained={pretrained}: does not fit {name} ({reason})"
                             ) from None
    return body, channels
