"""Attention heatmaps: source pieces along x, target pieces along y."""

from __future__ import annotations

from pathlib import Path

from nmt.data.tokenizer import Tokenizer
from nmt.translator import Translation


def plot_attention(tr: Translation, tgt_tokenizer: Tokenizer, path: Path) -> Path:
    """Write the best hypothesis' attention of one translation as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hyp = tr.hypotheses[0]
    if hyp.attention is None:
        raise ValueError("this translation has no attention weights (attention=none?)")
    weights = hyp.attention.numpy()  # (T + 1, S)
    tgt = [*tgt_tokenizer.pieces(hyp.tokens), "</s>"]
    src = tr.source_pieces
    fig, ax = plt.subplots(figsize=(max(4, 0.4 * len(src) + 2), max(3, 0.35 * len(tgt) + 1.5)))
    ax.imshow(weights, cmap="Greys", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(src)), src, rotation=90, fontsize=8)
    ax.set_yticks(range(len(tgt)), tgt, fontsize=8)
    ax.set_xlabel("source")
    ax.set_ylabel("translation")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
