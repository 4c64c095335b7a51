"""Decoding a trained model: the options, greedy/beam/sampling search, ensembles, the
lexical shortlist and checkpoint loading. May import nmt.model, nmt.data and nmt.core.
"""

from nmt.decoding.checkpoints import load_checkpoint
from nmt.decoding.dispatch import SourceBatch, decode
from nmt.decoding.options import Decoding
from nmt.decoding.search import Hypothesis, SearchModel

__all__ = ["Decoding", "Hypothesis", "SearchModel", "SourceBatch", "decode", "load_checkpoint"]
