"""``data=shapes``: a seeded, procedural captioning dataset of coloured shapes.

Each image shows 1 to 3 filled shapes on black; its captions name every shape by
size, colour and kind ("large red circle") and say where they are relative to each
other. Scenes are built so that the captions follow from the pixels up to phrasing:
no two shapes share colour and kind, sizes are far apart, and two shapes side by
side overlap vertically (two stacked ones horizontally), so "left of" and "above"
never both apply. Small enough for a CPU, big enough to need attention; the scene
(boxes included) is stored with each image so tests can check where a model looks.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import random
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, ImageDraw

from nmt.core.errors import DataError

log = logging.getLogger(__name__)

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 200, 40),
    "blue": (40, 90, 255),
    "yellow": (240, 220, 20),
    "white": (255, 255, 255),
}
SHAPE_NAMES: tuple[str, ...] = ("circle", "square", "triangle")
SIZE_RANGES: dict[str, tuple[int, int]] = {"small": (12, 15), "large": (20, 26)}  # side, px at 64
GAP = 2  # least number of empty pixels between two boxes
MIN_IMAGE_SIZE = 32
SHAPES_SPLITS: dict[str, int] = {"train": 8000, "val": 500, "test": 500}
SHAPES_VERSION = 1
_MAX_TRIES = 1000


@dataclass(frozen=True)
class ShapeObject:
    """One shape of a scene; ``box`` is (x0, y0, x1, y1) in pixels, x1 and y1 exclusive."""

    colour: str
    shape: str
    size: str
    box: tuple[int, int, int, int]

    @property
    def phrase(self) -> str:
        return f"{self.size} {self.colour} {self.shape}"

    def to_dict(self) -> dict[str, Any]:
        return {"colour": self.colour, "shape": self.shape, "size": self.size,
                "box": list(self.box)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ShapeObject:
        try:
            x0, y0, x1, y1 = (int(v) for v in d["box"])
            return cls(str(d["colour"]), str(d["shape"]), str(d["size"]), (x0, y0, x1, y1))
        except (KeyError, TypeError, ValueError):
            raise DataError(
                f"not a shapes scene object (colour, shape, size, box of 4 ints): {d!r}"
            ) from None


# --- scenes ----------------------------------------------------------------------------------


def make_scene(rng: random.Random, image_size: int = 64) -> list[ShapeObject]:
    """A random scene of 1 to 3 shapes, in reading order (left to right, or top to bottom).

    Two shapes are side by side or stacked (50/50); three are always in a row.
    """
    _check_image_size(image_size)
    n = rng.choice((1, 2, 3))
    stacked = n == 2 and rng.random() < 0.5
    kinds = [(c, s) for c in COLOURS for s in SHAPE_NAMES]
    for _ in range(_MAX_TRIES):
        chosen = rng.sample(kinds, n)
        sizes = [rng.choice(tuple(SIZE_RANGES)) for _ in range(n)]
        sides = [_side(rng, size, image_size) for size in sizes]
        boxes = _place(rng, sides, image_size, stacked)
        if boxes is not None:
            return [ShapeObject(colour, shape, size, box)
                    for (colour, shape), size, box in zip(chosen, sizes, boxes, strict=True)]
    raise RuntimeError(f"no valid scene of {n} shapes in {_MAX_TRIES} tries at {image_size} px")


def _check_image_size(image_size: int) -> None:
    if image_size < MIN_IMAGE_SIZE:
        raise DataError(f"shapes image_size must be at least {MIN_IMAGE_SIZE}, got {image_size}")


def _side(rng: random.Random, size: str, image_size: int) -> int:
    lo, hi = SIZE_RANGES[size]
    return rng.randint(round(lo * image_size / 64), round(hi * image_size / 64))


def _place(rng: random.Random, sides: list[int], image_size: int, stacked: bool
           ) -> list[tuple[int, int, int, int]] | None:
    """Boxes of these sides in a line (a row, or a column if ``stacked``); None if too long.

    Along the line the free space is split at random; across it, positions are random,
    except that two shapes overlap across the line by at least half the smaller side.
    """
    slack = image_size - sum(sides) - GAP * (len(sides) - 1)
    if slack < 0:
        return None
    cuts = sorted(rng.randint(0, slack) for _ in sides)
    along = [cut + sum(sides[:i]) + GAP * i for i, cut in enumerate(cuts)]
    across = [rng.randint(0, image_size - side) for side in sides]
    if len(sides) == 2:
        a, (sa, sb) = across[0], sides
        need = (min(sa, sb) + 1) // 2
        across[1] = rng.randint(max(0, a + need - sb), min(image_size - sb, a + sa - need))
    boxes = []
    for m, c, side in zip(along, across, sides, strict=True):
        x0, y0 = (c, m) if stacked else (m, c)
        boxes.append((x0, y0, x0 + side, y0 + side))
    return boxes


def left_of(a: ShapeObject, b: ShapeObject) -> bool:
    """Box a lies entirely left of box b, at least GAP pixels apart."""
    return a.box[2] + GAP <= b.box[0]


def above(a: ShapeObject, b: ShapeObject) -> bool:
    """Box a lies entirely above box b, at least GAP pixels apart."""
    return a.box[3] + GAP <= b.box[1]


def scene_captions(scene: Sequence[ShapeObject]) -> list[str]:
    """Every caption of a scene: the same facts in different phrasings."""
    p = [f"a {o.phrase}" for o in sorted(scene, key=lambda o: o.box[0])]
    if len(scene) == 1:
        return [p[0], f"there is {p[0]}", f"a single {scene[0].phrase}"]
    if len(scene) == 2:
        a, b = sorted(scene, key=lambda o: o.box[0])
        top, bottom = sorted(scene, key=lambda o: o.box[1])
        if left_of(a, b) and not above(top, bottom):
            return [f"{p[0]} to the left of {p[1]}", f"{p[1]} to the right of {p[0]}",
                    f"{p[0]} next to {p[1]}"]
        if above(top, bottom) and not left_of(a, b):
            t, u = f"a {top.phrase}", f"a {bottom.phrase}"
            return [f"{t} above {u}", f"{u} below {t}", f"{t} on top of {u}"]
        raise ValueError(f"two shapes neither clearly side by side nor stacked: {scene}")
    if len(scene) == 3:
        a, b, c = sorted(scene, key=lambda o: o.box[0])
        if not (left_of(a, b) and left_of(b, c)):
            raise ValueError(f"three shapes not in a row: {scene}")
        return [f"{p[0]} , {p[1]} and {p[2]} from left to right",
                f"{p[2]} , {p[1]} and {p[0]} from right to left"]
    raise ValueError(f"a scene has 1 to 3 shapes, got {len(scene)}")


def object_for_phrase(scene: Sequence[ShapeObject], size: str, colour: str, shape: str
                      ) -> ShapeObject | None:
    """The shape of the scene a phrase like "large red circle" names, or None."""
    return next((o for o in scene if (o.size, o.colour, o.shape) == (size, colour, shape)), None)


def render(scene: Sequence[ShapeObject], image_size: int) -> Image.Image:
    """The scene drawn on black: an RGB image, ``image_size`` pixels square."""
    image = Image.new("RGB", (image_size, image_size))
    draw = ImageDraw.Draw(image)
    for obj in scene:
        x0, y0, x1, y1 = obj.box
        fill = COLOURS[obj.colour]
        if obj.shape == "circle":
            draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=fill)
        elif obj.shape == "square":
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=fill)
        elif obj.shape == "triangle":  # pointing up
            draw.polygon([(x0, y1 - 1), (x1 - 1, y1 - 1), ((x0 + x1 - 1) // 2, y0)], fill=fill)
        else:
            raise ValueError(f"unknown shape {obj.shape!r}; valid: {', '.join(SHAPE_NAMES)}")
    return image


# --- the dataset on disk ---------------------------------------------------------------------


def write_shapes(out_dir: str | os.PathLike, counts: Mapping[str, int] = SHAPES_SPLITS,
                 seed: int = 1, image_size: int = 64) -> Path:
    """Generate the dataset into ``out_dir``; returns the path of its ``dataset.json``.

    Writes ``images/<split>_<i:05d>.png`` and a Karpathy-split ``dataset.json`` (read it
    with ``read_karpathy(json_path, out_dir / "images")``). The same settings give
    byte-identical files, and a dataset already there with the same settings is reused.
    The directory appears whole or not at all.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # One process generates, the others (DDP ranks) wait for it and reuse its dataset.
    with open(out_dir.with_name(f".{out_dir.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _write_shapes(out_dir, _settings(counts, seed, image_size), seed, image_size)


def _write_shapes(out_dir: Path, settings: dict[str, Any], seed: int, image_size: int
                  ) -> Path:
    json_path = out_dir / "dataset.json"
    existing = _existing_settings(json_path)
    if existing == settings:
        log.info("reusing the shapes dataset in %s (same settings)", out_dir)
        return json_path
    if existing is None and out_dir.exists() and (not out_dir.is_dir()
                                                  or any(out_dir.iterdir())):
        raise DataError(f"{out_dir}: exists and is not a shapes dataset; remove it or "
                        "choose another directory")
    start = time.perf_counter()
    tmp = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "images").mkdir(parents=True)
    try:
        images = []
        for split, count in settings["counts"].items():
            rng = random.Random(_split_seed(seed, split))
            for i in range(count):
                images.append(_write_image(rng, tmp / "images", split, i, image_size))
        data = {"dataset": "shapes", "settings": settings, "images": images}
        (tmp / "dataset.json").write_text(json.dumps(data), encoding="utf-8")
        _swap_in(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("generated %d shapes images in %s (%.1f s)", len(images), out_dir,
             time.perf_counter() - start)
    return json_path


def _settings(counts: Mapping[str, int], seed: int, image_size: int) -> dict[str, Any]:
    _check_image_size(image_size)
    for split, count in counts.items():
        if not re.fullmatch(r"[A-Za-z0-9_-]+", str(split)):
            raise DataError(f"shapes split name {split!r} must be letters, digits, _ or -")
        if int(count) < 0:
            raise DataError(f"shapes split {split!r} needs a count >= 0, got {count}")
    return {"counts": {str(k): int(v) for k, v in counts.items()}, "seed": int(seed),
            "image_size": int(image_size), "version": SHAPES_VERSION}


def _existing_settings(json_path: Path) -> dict[str, Any] | None:
    """The settings of the shapes dataset at ``json_path``; None if there is none."""
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("dataset") != "shapes":
        return None
    settings = data.get("settings")
    return settings if isinstance(settings, dict) else None


def _split_seed(seed: int, split: str) -> int:
    """A seed per split, stable across runs (Python's own str hash is salted)."""
    digest = hashlib.sha256(f"shapes/{seed}/{split}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _write_image(rng: random.Random, image_dir: Path, split: str, i: int, image_size: int
                 ) -> dict[str, Any]:
    """Render one scene to a PNG; its entry of the Karpathy "images" list."""
    scene = make_scene(rng, image_size)
    filename = f"{split}_{i:05d}.png"
    render(scene, image_size).save(image_dir / filename, format="PNG")
    return {"filename": filename, "split": split,
            "sentences": [{"raw": c, "tokens": c.split()} for c in scene_captions(scene)],
            "scene": [o.to_dict() for o in scene]}


def _swap_in(tmp: Path, out_dir: Path) -> None:
    """Move the finished ``tmp`` directory to ``out_dir``, replacing an older dataset."""
    old = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out_dir.exists():
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)


class AttendedWord(NamedTuple):
    """Where the attention was when a colour or shape word was written."""

    kind: str  # "colour" or "shape"
    hit: bool  # the most attended cell's centre lies inside the named shape's box
    distance: float  # pixels from that centre to the box (0 inside; inf: no such shape)
    mass: float  # the share of the attention on cells whose centres lie inside the box


def attended_words(words: Sequence[str], attention: np.ndarray, scene: Sequence[ShapeObject],
                   grid: tuple[int, int], image_size: int) -> list[AttendedWord]:
    """The colour and shape words of a caption and where the attention was for each.

    ``words`` are the caption's words, one attention row each ((T, rows * cols), cells
    row-major); the phrase "size colour shape" around a word names its object. A word
    whose phrase names no object of the scene (a wrong caption) is a miss.
    """
    rows, cols = grid
    r, c = np.divmod(np.arange(rows * cols), cols)
    xs, ys = (c + 0.5) * image_size / cols, (r + 0.5) * image_size / rows  # cell centres
    found = []
    for t, word in enumerate(words):
        if word not in COLOURS and word not in SHAPE_NAMES:
            continue
        kind = "colour" if word in COLOURS else "shape"
        start = t - 1 if kind == "colour" else t - 2  # where the phrase begins
        phrase = list(words[start:start + 3]) if start >= 0 else []
        obj = object_for_phrase(scene, *phrase) if len(phrase) == 3 else None
        if obj is None:
            found.append(AttendedWord(kind, False, float("inf"), 0.0))
            continue
        x0, y0, x1, y1 = obj.box
        inside = (x0 <= xs) & (xs < x1) & (y0 <= ys) & (ys < y1)  # (cells,)
        best = int(np.argmax(attention[t]))
        dx = max(x0 - xs[best], 0.0, xs[best] - x1)
        dy = max(y0 - ys[best], 0.0, ys[best] - y1)
        found.append(AttendedWord(kind, bool(inside[best]), float(np.hypot(dx, dy)),
                                  float(attention[t][inside].sum())))
    return found


def attention_hits(words: Sequence[str], attention: np.ndarray, scene: Sequence[ShapeObject],
                   grid: tuple[int, int], image_size: int) -> tuple[int, int]:
    """How many colour and shape words of a caption were written while the most attended
    cell lay inside the box of the shape the word names, and how many such words there
    are (``attended_words``). A cell lies inside a box when its centre does."""
    found = attended_words(words, attention, scene, grid, image_size)
    return sum(w.hit for w in found), len(found)
