"""The network: plain nn.Modules, batch-first."""

from nmt.model.decoder import DecoderState
from nmt.model.seq2seq import EncoderOutput, Seq2Seq

__all__ = ["DecoderState", "EncoderOutput", "Seq2Seq"]
