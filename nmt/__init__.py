"""RNN neural machine translation with PyTorch Lightning and Hydra."""

import os

from nmt.core import __version__
from nmt.data.workers import WORKER_ENV  # numpy-free, torch-free: a worker imports it too

__all__ = ["__version__"]

# A preparation worker (nmt/data/workers.py) needs numpy and sentencepiece only: it skips
# what follows, which imports torch and torchvision (seconds of start-up per worker).
if os.environ.get(WORKER_ENV) != "1":
    # An installed torchvision whose compiled ops do not fit this torch (a wheel built for
    # another torch) breaks lightning's import, which imports torchvision when it is there:
    # nmt.model.backbones imports it with placeholders for those ops, first.
    from nmt.model.backbones import prepare_torchvision

    prepare_torchvision()

    # Registers the structured config schema that conf/train.yaml starts from, so that any
    # Hydra composition of our configs (command line, tests, notebooks) finds it.
    from nmt.cli import config as _config  # noqa: F401
