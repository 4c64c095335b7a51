"""The network: plain nn.Modules, batch-first (encoders, cells, attention, decoder); build
models with nmt.model.registry. May import nmt.data and nmt.core.
"""

from nmt.model.decoder import DecoderState
from nmt.model.encoder import Encoder
from nmt.model.registry import build_model, model_from_checkpoint, model_record
from nmt.model.seq2seq import EncoderOutput, Seq2Seq

__all__ = ["DecoderState", "Encoder", "EncoderOutput", "Seq2Seq", "build_model",
           "model_from_checkpoint", "model_record"]
