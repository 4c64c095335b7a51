"""Corpora, tokenizers and batches: reading and filtering text, SentencePiece, preparation
in worker processes, co-occurrence counts, datasets, several corpora mixed by weight,
token-budget batching, images and captions. May import nmt.core only.
"""
