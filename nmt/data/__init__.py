"""Corpora, tokenizers and batches: reading and cleaning text, SentencePiece, datasets,
token-budget batching, images and captions. May import nmt.core only.
"""
