"""Captioning datasets: readers of the common formats into one record type.

Two formats are read:

* the "Karpathy split" JSON used for Flickr8k, Flickr30k and COCO (and written by
  :mod:`nmt.data.shapes`): ``{"images": [{"filepath": ..., "filename": ...,
  "split": ..., "sentences": [{"raw": ..., "tokens": [...]}, ...]}, ...]}``;
* a CSV file with ``image`` and ``caption`` columns, one row per caption.

Images are not opened here; a missing or broken image is reported when its
pixels are read (:func:`nmt.data.images.read_pixels`).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nmt.core.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CaptionedImage:
    """An image file and its reference captions; ``scene`` only for generated data."""

    path: Path
    captions: tuple[str, ...]
    scene: tuple[dict[str, Any], ...] | None = None


# Our split name -> the Karpathy JSON split values it takes.
KARPATHY_SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("train", "restval"),
    "valid": ("val",),
    "test": ("test",),
}


def read_karpathy(json_path: str | os.PathLike, image_dir: str | os.PathLike,
                  splits: Mapping[str, Sequence[str]] = KARPATHY_SPLITS
                  ) -> dict[str, list[CaptionedImage]]:
    """The images of a Karpathy-split JSON, by our split name, in file order.

    An image's path is ``image_dir / filepath / filename`` (``filepath`` is optional).
    Entries whose split is not named in ``splits`` are skipped.
    """
    path = Path(json_path)
    data = _load_json(path)
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise DataError(f'{path}: no "images" list; expected a Karpathy-split JSON like '
                        '{"images": [{"filename": ..., "split": ..., "sentences": [...]}]}')
    ours: dict[str, list[str]] = {}
    for name, theirs in splits.items():
        for split in theirs:
            ours.setdefault(split, []).append(name)
    out: dict[str, list[CaptionedImage]] = {name: [] for name in splits}
    skipped = 0
    for i, entry in enumerate(images):
        record, split = _karpathy_entry(path, i, entry, Path(image_dir))
        if split not in ours:
            skipped += 1
        for name in ours.get(split, ()):
            out[name].append(record)
    if skipped:
        log.info("%s: skipped %d images of splits not in %s", path, skipped, dict(splits))
    return out


def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno} "
                        f"({e.msg})") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: invalid UTF-8 at byte {e.start}; the file must be "
                        "UTF-8 JSON") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read the file ({e.strerror or e})") from None


def _karpathy_entry(path: Path, i: int, entry: Any, image_dir: Path
                    ) -> tuple[CaptionedImage, str]:
    """One entry of the "images" list as a record, with its Karpathy split."""
    where = f"{path}: images[{i}]"
    if not isinstance(entry, dict):
        raise DataError(f"{where} is not an object")
    for key, kind in (("filename", str), ("split", str), ("sentences", list)):
        if not isinstance(entry.get(key), kind):
            found = "missing" if key not in entry else f"a {type(entry[key]).__name__}"
            raise DataError(f'{where} has no "{key}" {kind.__name__} ({found})')
    filename, filepath = entry["filename"], entry.get("filepath") or ""
    if not filename or not isinstance(filepath, str):
        raise DataError(f'{where} has an empty "filename" or a non-string "filepath"')
    where = f"{where} ({filename})"
    captions = []
    for j, sentence in enumerate(entry["sentences"]):
        text = _sentence_text(sentence)
        if text is None:
            raise DataError(f'{where}: sentences[{j}] has neither a "raw" string nor a '
                            '"tokens" list')
        if text:
            captions.append(text)
    if not captions:
        raise DataError(f"{where} has no captions")
    scene = entry.get("scene")
    if scene is not None and not (isinstance(scene, list)
                                  and all(isinstance(o, dict) for o in scene)):
        raise DataError(f'{where}: "scene" must be a list of objects')
    record = CaptionedImage(image_dir / filepath / filename, tuple(captions),
                            None if scene is None else tuple(scene))
    return record, entry["split"]


def _sentence_text(sentence: Any) -> str | None:
    """The stripped caption of a sentence entry, or None if it has none."""
    if not isinstance(sentence, dict):
        return None
    raw = sentence.get("raw")
    if isinstance(raw, str):
        return raw.strip()
    tokens = sentence.get("tokens")
    if isinstance(tokens, list) and all(isinstance(t, str) for t in tokens):
        return " ".join(tokens).strip()
    return None


def read_caption_csv(csv_path: str | os.PathLike, image_dir: str | os.PathLike
                     ) -> list[CaptionedImage]:
    """Images and captions of a CSV with ``image`` and ``caption`` columns.

    Rows of the same image are grouped into one record, in order of first appearance;
    an image's path is ``image_dir / image``. Other columns are ignored.
    """
    path = Path(csv_path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    grouped: dict[str, list[str]] = {}
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise DataError(f"{path}: the file is empty")
            columns = _columns(path, header)
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue  # blank line
                image, caption = (row[c].strip() if c < len(row) else "" for c in columns)
                if not image or not caption:
                    what = "image" if not image else "caption"
                    raise DataError(f"{path}, line {reader.line_num}: empty {what} cell")
                grouped.setdefault(image, []).append(caption)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: invalid UTF-8 at byte {e.start}; the file must be "
                        "UTF-8 text") from None
    except csv.Error as e:
        raise DataError(f"{path}: not a valid CSV file ({e})") from None
    if not grouped:
        raise DataError(f"{path}: a header but no rows")
    root = Path(image_dir)
    return [CaptionedImage(root / image, tuple(caps)) for image, caps in grouped.items()]


def _columns(path: Path, header: list[str]) -> tuple[int, int]:
    """Positions of the image and caption columns (names compared case-insensitively)."""
    names = [h.strip().lower() for h in header]
    if "image" not in names or "caption" not in names:
        raise DataError(f'{path}: the header needs "image" and "caption" columns; '
                        f"found: {', '.join(repr(h) for h in header)}")
    return names.index("image"), names.index("caption")
