"""Attention plots: heatmaps of translations (source pieces along x, target pieces along
y), and the attention of captions laid over the image, one panel per word."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from nmt.data.tokenizer import Tokenizer
from nmt.inference.translator import Translation

if TYPE_CHECKING:
    from nmt.inference.captioner import Caption


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


def plot_caption_attention(caption: Caption, tokenizer: Tokenizer, path: Path,
                           columns: int = 5) -> Path:
    """One panel per word of the best caption: the image as the model saw it, with the
    attention over its feature grid laid on top and the most attended cell outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    hyp = caption.hypotheses[0]
    if hyp.attention is None or caption.pixels is None:
        raise ValueError("this caption has no attention weights (attention=none?)")
    rows, cols = caption.grid
    words = [*tokenizer.pieces(hyp.tokens), "</s>"]
    weights = hyp.attention.numpy().reshape(len(words), rows, cols)
    size = caption.pixels.shape[0]
    lines = (len(words) + columns - 1) // columns
    fig, axes = plt.subplots(lines, columns, figsize=(2.2 * columns, 2.4 * lines),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, word, grid in zip(axes.flat, words, weights, strict=False):
        ax.imshow(caption.pixels)
        ax.imshow(grid, cmap="magma", alpha=0.55, extent=(0, size, size, 0),
                  interpolation="nearest", vmin=0.0, vmax=float(grid.max()) or 1.0)
        r, c = divmod(int(grid.argmax()), cols)
        ax.add_patch(Rectangle((c * size / cols, r * size / rows), size / cols, size / rows,
                               fill=False, edgecolor="cyan", linewidth=1.5))
        ax.set_title(word.replace("\u2581", " ").strip() or word, fontsize=10)
    fig.suptitle(caption.text, fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
