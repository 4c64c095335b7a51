"""Images in, captions out: a trained captioning checkpoint with its own SentencePiece model.

    captioner = Captioner.from_checkpoint("caption.ckpt")
    [c] = captioner.caption([PIL.Image.open("dog.jpg")], Decoding(beam_size=3, max_len=30))
    c.text, c.hypotheses[0].score
    for c in captioner.caption_files(paths): ...   # streaming; unreadable files reported

Images are preprocessed by nmt.data.images (``to_pixels`` then ``normalize``) with
the settings the model was trained with (its record keeps them): the very functions
training used, so training and inference cannot disagree. Search is nmt.decoding's,
as for translation; the attention of a caption is over the cells of the encoder's
feature grid, row-major (cell ``r * cols + c``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from nmt.core.errors import CheckpointError, ConfigError, DataError, TokenizerError
from nmt.data.captioning import ImageSettings
from nmt.data.images import normalize, read_pixels, to_pixels
from nmt.data.tokenizer import Tokenizer
from nmt.decoding.checkpoints import load_checkpoint
from nmt.decoding.dispatch import SourceBatch, decode
from nmt.decoding.options import Decoding
from nmt.inference.translator import Candidate
from nmt.model import Seq2Seq, model_from_checkpoint
from nmt.model.image_encoder import ImageEncoder

DEFAULT_DECODING = Decoding(beam_size=3, max_len=30)


def no_shortlist(decoding: Decoding) -> Decoding:
    """A lexical shortlist needs source pieces: captions have none."""
    if decoding.shortlist:
        raise ConfigError("decoding.shortlist: a captioning model has no source pieces to "
                          "shortlist for; leave it false")
    return decoding


@dataclass(frozen=True)
class Caption:
    """The captions of one image, best first; ``pixels`` as the model saw the image
    (uint8 (size, size, 3), kept when attention was asked for)."""

    source: str
    hypotheses: list[Candidate]
    grid: tuple[int, int]  # (rows, cols) of the feature grid the attention is over
    pixels: np.ndarray | None = field(default=None, repr=False)

    @property
    def text(self) -> str:
        return self.hypotheses[0].text if self.hypotheses else ""


@dataclass(frozen=True)
class ImageFailure:
    """An input that is not a readable image: skipped, with the one-line reason."""

    source: str
    message: str


class Captioner:
    """A captioning model and its tokenizer; thread-safe like the Translator."""

    def __init__(self, model: Seq2Seq, tokenizer: Tokenizer, device: str | torch.device = "cpu",
                 batch_size: int = 32) -> None:
        if model.record is None or model.record["config"].get("encoder") != "image":
            raise CheckpointError("not an image captioning model (its encoder reads text); "
                                  "use translate.py")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.settings = ImageSettings.of(model.record["config"])
        assert isinstance(model.encoder, ImageEncoder)  # the record says so
        self.grid: tuple[int, int] = model.encoder.grid_shape(self.settings.size)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str | torch.device = "cpu",
                        batch_size: int = 32) -> Captioner:
        ckpt = load_checkpoint(path, "cpu")
        model = model_from_checkpoint(ckpt, str(path))
        if model.record is None or model.record["config"].get("encoder") != "image":
            raise CheckpointError(f"{path}: a translation model, not an image captioning "
                                  "model; use translate.py")
        try:
            tokenizer = Tokenizer(ckpt["tokenizers"]["tgt"])
        except (KeyError, TypeError, TokenizerError) as e:
            raise CheckpointError(f"{path}: the checkpoint does not fit this toolkit's "
                                  f"model ({str(e).splitlines()[0]})") from None
        return cls(model, tokenizer, device, batch_size)

    def pixels(self, image: Image.Image | np.ndarray) -> np.ndarray:
        """uint8 (size, size, 3) of a PIL image, or a pixel array already of that shape."""
        if isinstance(image, Image.Image):
            return to_pixels(image, self.settings.size)
        size = self.settings.size
        if image.shape != (size, size, 3) or image.dtype != np.uint8:
            raise ValueError(f"pixel arrays must be uint8 ({size}, {size}, 3), got "
                             f"{image.dtype} {image.shape}")
        return image

    def caption(self, images: Sequence[Image.Image | np.ndarray],
                decoding: Decoding | None = None, *, attention: bool = False,
                names: Sequence[str] | None = None) -> list[Caption]:
        """The captions of each image, in input order, ``batch_size`` images at a time."""
        decoding = no_shortlist(decoding or DEFAULT_DECODING)
        names = list(names) if names is not None else [str(i) for i in range(len(images))]
        out: list[Caption] = []
        for start in range(0, len(images), self.batch_size):
            pixels = np.stack([self.pixels(im) for im in images[start:start + self.batch_size]])
            out += self._caption_pixels(pixels, names[start:start + len(pixels)], decoding,
                                        attention)
        return out

    def _caption_pixels(self, pixels: np.ndarray, names: Sequence[str], decoding: Decoding,
                        attention: bool) -> list[Caption]:
        src = normalize(torch.from_numpy(pixels), self.settings.mean,
                        self.settings.std).to(self.device)
        cells = self.grid[0] * self.grid[1]
        lengths = torch.full((len(pixels),), cells, dtype=torch.long, device=self.device)
        with torch.inference_mode():
            found = decode(self.model, SourceBatch(src, lengths), decoding, attention)
        captions = []
        for name, image, hyps in zip(names, pixels, found, strict=True):
            texts = self.tokenizer.decode([list(h.tokens) for h in hyps])
            candidates = [Candidate(t, h.score, h.tokens, h.attention)
                          for t, h in zip(texts, hyps, strict=True)]
            captions.append(Caption(name, candidates, self.grid, image if attention else None))
        return captions

    def caption_files(self, paths: Iterable[str], decoding: Decoding | None = None, *,
                      attention_first: int = 0) -> Iterator[Caption | ImageFailure]:
        """Caption image files as they come, ``batch_size`` at a time; a file that is not a
        readable image gives an ImageFailure in its place, never an exception. Attention
        (and pixels) are kept for the first ``attention_first`` images."""
        decoding = no_shortlist(decoding or DEFAULT_DECODING)
        seen = 0
        chunk: list[str] = []
        for path in paths:
            chunk.append(str(path))
            if len(chunk) == self.batch_size:
                yield from self._caption_chunk(chunk, decoding, seen < attention_first)
                seen += len(chunk)
                chunk = []
        if chunk:
            yield from self._caption_chunk(chunk, decoding, seen < attention_first)

    def _caption_chunk(self, paths: list[str], decoding: Decoding, attention: bool
                       ) -> Iterator[Caption | ImageFailure]:
        read: dict[int, np.ndarray] = {}
        failures: dict[int, ImageFailure] = {}
        for i, path in enumerate(paths):
            try:
                read[i] = read_pixels(path, self.settings.size)
            except DataError as e:
                failures[i] = ImageFailure(path, str(e))
        captions = iter(self._caption_pixels(np.stack(list(read.values())),
                                             [paths[i] for i in read], decoding, attention)
                        if read else [])
        for i in range(len(paths)):
            yield failures[i] if i in failures else next(captions)
