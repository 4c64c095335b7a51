"""The ids of the special pieces, the same in every vocabulary (SentencePiece is trained
with them): padding, unknown, begin and end of sentence."""

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
