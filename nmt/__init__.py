"""RNN neural machine translation with PyTorch Lightning and Hydra."""

__version__ = "0.1.0"

# Registers the structured config schema that conf/train.yaml starts from, so that any
# Hydra composition of our configs (command line, tests, notebooks) finds it.
from nmt import config as _config  # noqa: F401
