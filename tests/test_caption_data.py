"""Captioning data: image preprocessing, caption file readers, the generated shapes dataset."""

from __future__ import annotations

import json
import random
import re
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nmt.core.errors import DataError
from nmt.data import shapes
from nmt.data.captions import KARPATHY_SPLITS, CaptionedImage, read_caption_csv, read_karpathy
from nmt.data.images import IMAGENET_MEAN as MEAN
from nmt.data.images import IMAGENET_STD as STD
from nmt.data.images import normalize, preprocess, read_pixels, to_pixels
from nmt.data.shapes import ShapeObject, make_scene, object_for_phrase, render, scene_captions

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def one_line_error(excinfo: pytest.ExceptionInfo, *parts: str) -> None:
    """The message of a DataError is one line that contains every part."""
    message = str(excinfo.value)
    assert "\n" not in message and all(part in message for part in parts), (parts, message)


def three_bands(width: int, height: int) -> Image.Image:
    """Red, green and blue thirds along the longer side."""
    bands = np.repeat(np.array([[RED, GREEN, BLUE]], np.uint8), max(width, height) // 3, axis=1)
    a = np.repeat(bands, min(width, height), axis=0)  # (short, long, 3)
    return Image.fromarray(a if width > height else a.transpose(1, 0, 2).copy())


# --- images ----------------------------------------------------------------------------------


@pytest.mark.parametrize("width, height", [(60, 20), (20, 60)])
def test_to_pixels_crops_the_centre_of_a_non_square_image(width, height):
    pixels = to_pixels(three_bands(width, height), 20)  # shorter side is 20: crop only
    assert pixels.shape == (20, 20, 3) and pixels.dtype == np.uint8
    assert (pixels == GREEN).all()


def test_to_pixels_resizes_the_shorter_side_and_converts_to_rgb():
    gray = Image.new("L", (53, 37), 200)
    pixels = to_pixels(gray, 16)
    assert pixels.shape == (16, 16, 3) and pixels.dtype == np.uint8
    assert (pixels == 200).all()
    big = to_pixels(three_bands(300, 100), 10)  # 30 x 10 after resizing, green in the middle
    assert big.shape == (10, 10, 3)
    assert (np.abs(big[:, 3:7].astype(int) - GREEN) <= 2).all()


def test_normalize_a_known_pixel_by_hand():
    pixels = np.zeros((2, 3, 3), dtype=np.uint8)
    pixels[1, 2] = (255, 0, 128)
    x = normalize(torch.from_numpy(pixels), MEAN, STD)
    assert x.shape == (3, 2, 3) and x.dtype == torch.float32
    expected = [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225]
    assert x[:, 1, 2].tolist() == pytest.approx(expected, abs=1e-6)
    assert x[:, 0, 0].tolist() == pytest.approx([-0.485 / 0.229, -0.456 / 0.224,
                                                 -0.406 / 0.225], abs=1e-6)
    batch = torch.from_numpy(np.stack([pixels, pixels[::-1].copy()]))
    xb = normalize(batch, MEAN, STD)
    assert xb.shape == (2, 3, 2, 3) and xb.is_contiguous()
    assert torch.equal(xb[0], x)
    assert torch.equal(xb[1], x.flip(1))
    with pytest.raises(ValueError, match="uint8"):
        normalize(torch.zeros(4, 4, 3), MEAN, STD)


def test_training_and_inference_preprocess_alike(tmp_path):
    image = render(make_scene(random.Random(3)), 64).resize((80, 64))
    image.save(tmp_path / "x.png")
    cached = read_pixels(tmp_path / "x.png", 32)  # what training caches
    trained = normalize(torch.from_numpy(cached)[None], MEAN, STD)[0]
    inferred = preprocess(Image.open(tmp_path / "x.png"), 32, MEAN, STD)
    assert inferred.shape == (3, 32, 32)
    assert torch.equal(trained, inferred)


def test_unreadable_images_are_one_line_errors(tmp_path):
    (tmp_path / "x.jpg").write_text("not an image\n")
    png = tmp_path / "cut.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(png)
    png.write_bytes(png.read_bytes()[:2000])
    for name in ("x.jpg", "cut.png", "missing.png"):
        with pytest.raises(DataError) as e:
            read_pixels(tmp_path / name, 32)
        one_line_error(e, f"{tmp_path / name}: not a readable image (")


# --- Karpathy JSON ---------------------------------------------------------------------------


def karpathy_fixture(tmp_path: Path) -> tuple[Path, Path]:
    """Four generated images (two under val2014/) and their Karpathy-split JSON."""
    image_dir = tmp_path / "images"
    (image_dir / "val2014").mkdir(parents=True)
    rng = random.Random(0)
    names = ["a.png", "val2014/b.png", "c.png", "val2014/d.png", "e.png"]
    for name in names:
        render(make_scene(rng), 64).save(image_dir / name)
    images = [
        {"filename": "a.png", "split": "train",
         "sentences": [{"raw": " A dog runs . ", "tokens": ["a", "dog", "runs"]},
                       {"raw": "A cat ."}]},
        {"filepath": "val2014", "filename": "b.png", "split": "val",
         "sentences": [{"tokens": ["two", "birds"]}]},
        {"filename": "c.png", "split": "restval", "sentences": [{"raw": "red"}],
         "scene": [{"colour": "red"}]},
        {"filepath": "val2014", "filename": "d.png", "split": "test",
         "sentences": [{"raw": "x"}, {"raw": "y"}]},
        {"filename": "e.png", "split": "train", "sentences": [{"raw": "last"}]},
    ]
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"dataset": "coco", "images": images}))
    return path, image_dir


def test_read_karpathy_merges_restval_into_train_and_keeps_file_order(tmp_path):
    path, image_dir = karpathy_fixture(tmp_path)
    data = read_karpathy(path, image_dir)
    assert set(data) == set(KARPATHY_SPLITS)
    assert [r.path.name for r in data["train"]] == ["a.png", "c.png", "e.png"]
    assert data["train"][0] == CaptionedImage(image_dir / "a.png", ("A dog runs .", "A cat ."))
    assert data["train"][1].scene == ({"colour": "red"},)
    assert data["valid"] == [CaptionedImage(image_dir / "val2014" / "b.png", ("two birds",))]
    assert data["test"][0].path == image_dir / "val2014" / "d.png"
    assert data["test"][0].captions == ("x", "y")
    for records in data.values():
        for r in records:
            assert read_pixels(r.path, 16).shape == (16, 16, 3)
    only_train = read_karpathy(path, image_dir, {"train": ("train",)})
    assert [r.path.name for r in only_train["train"]] == ["a.png", "e.png"]


@pytest.mark.parametrize("content, expected", [
    (None, "file not found"),
    ('{"images": [\n  {"filename": "a.png",, }', "invalid JSON at line 2, column"),
    ('{"dataset": "coco"}', 'no "images" list'),
    ('{"images": [{"filename": "a", "split": "val", "sentences": [{"raw": "x"}]}, '
     '{"split": "val", "sentences": []}]}', 'images[1] has no "filename"'),
    ('{"images": [{"filename": "a.png", "sentences": [{"raw": "x"}]}]}',
     'images[0] has no "split"'),
    ('{"images": [{"filename": "a.png", "split": "val"}]}', 'images[0] has no "sentences"'),
    ('{"images": [{"filename": "a.png", "split": "val", "sentences": [{"raw": " "}]}]}',
     "images[0] (a.png) has no captions"),
    ('{"images": [{"filename": "a.png", "split": "val", "sentences": [{"x": 1}]}]}',
     'images[0] (a.png): sentences[0] has neither a "raw"'),
])
def test_read_karpathy_errors(tmp_path, content, expected):
    path = tmp_path / "bad.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError) as e:
        read_karpathy(path, tmp_path)
    one_line_error(e, f"{path}: ", expected)


# --- caption CSV -----------------------------------------------------------------------------


def test_read_caption_csv_groups_rows_by_image(tmp_path):
    path = tmp_path / "captions.csv"
    path.write_text('\ufeffImage,id,caption\nb.jpg,1,"A dog, running ."\na.jpg,2,A cat .\n\n'
                    'b.jpg,3," Two dogs . "\n', encoding="utf-8")
    records = read_caption_csv(path, tmp_path / "imgs")
    assert records == [
        CaptionedImage(tmp_path / "imgs" / "b.jpg", ("A dog, running .", "Two dogs .")),
        CaptionedImage(tmp_path / "imgs" / "a.jpg", ("A cat .",)),
    ]


@pytest.mark.parametrize("content, expected", [
    (None, "file not found"),
    ("", "the file is empty"),
    ("filename,text\na.jpg,hi\n", "found: 'filename', 'text'"),
    ("image,caption\n", "a header but no rows"),
    ("image,caption\na.jpg,hi\nb.jpg,\n", "line 3: empty caption cell"),
])
def test_read_caption_csv_errors(tmp_path, content, expected):
    path = tmp_path / "bad.csv"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError) as e:
        read_caption_csv(path, tmp_path)
    one_line_error(e, f"{path}", expected)


# --- shapes ----------------------------------------------------------------------------------

PHRASE = r"a (small|large) (\w+) (circle|square|triangle)"
TEMPLATES = {  # caption pattern -> order of the named objects, along the axis the caption says
    rf"{PHRASE}|there is {PHRASE}|a single (small|large) (\w+) (circle|square|triangle)": "",
    rf"{PHRASE} to the left of {PHRASE}": "x01",
    rf"{PHRASE} to the right of {PHRASE}": "x10",
    rf"{PHRASE} next to {PHRASE}": "x01",
    rf"{PHRASE} above {PHRASE}": "y01",
    rf"{PHRASE} below {PHRASE}": "y10",
    rf"{PHRASE} on top of {PHRASE}": "y01",
    rf"{PHRASE} , {PHRASE} and {PHRASE} from left to right": "x012",
    rf"{PHRASE} , {PHRASE} and {PHRASE} from right to left": "x210",
}


def parse_caption(caption: str, scene: list[ShapeObject]) -> tuple[list[ShapeObject], str]:
    """The objects a caption names, in order, and the relation it states."""
    for pattern, relation in TEMPLATES.items():
        m = re.fullmatch(pattern, caption)
        if m:
            words = [w for w in m.groups() if w is not None]
            objs = [object_for_phrase(scene, *words[k:k + 3]) for k in range(0, len(words), 3)]
            assert None not in objs, caption
            return objs, relation
    raise AssertionError(f"caption fits no template: {caption!r}")


def before(a: ShapeObject, b: ShapeObject, axis: str) -> bool:
    """a's box ends at least 2 px before b's starts, along x or y."""
    k = 0 if axis == "x" else 1
    return a.box[k + 2] + 2 <= b.box[k]


def overlap(a: ShapeObject, b: ShapeObject, axis: str) -> int:
    k = 0 if axis == "x" else 1
    return min(a.box[k + 2], b.box[k + 2]) - max(a.box[k], b.box[k])


def colour_at(image: Image.Image, obj: ShapeObject) -> tuple[int, ...]:
    """The pixel at the box centre, or low in the middle for a triangle (pointing up)."""
    x0, y0, x1, y1 = obj.box
    y = (y0 + 3 * y1) // 4 if obj.shape == "triangle" else (y0 + y1) // 2
    return image.getpixel(((x0 + x1) // 2, y))


def shape_of(image: Image.Image, obj: ShapeObject) -> str:
    """Tell the shape in a box from its corners and its top middle pixel."""
    x0, y0, x1, y1 = obj.box
    lit = [image.getpixel(p) != (0, 0, 0) for p in
           ((x0, y0), (x1 - 1, y0), (x0, y1 - 1), (x1 - 1, y1 - 1), ((x0 + x1 - 1) // 2, y0))]
    kinds = {(True,) * 5: "square", (False, False, False, False, True): "circle",
             (False, False, True, True, True): "triangle"}
    return kinds.get(tuple(lit), f"unknown {lit}")


def test_scenes_satisfy_their_constraints_and_captions():
    rng = random.Random(0)
    layouts = set()
    for _ in range(300):
        scene = make_scene(rng)
        assert 1 <= len(scene) <= 3
        assert len({(o.colour, o.shape) for o in scene}) == len(scene)
        for o in scene:
            x0, y0, x1, y1 = o.box
            lo, hi = shapes.SIZE_RANGES[o.size]
            assert min(x0, y0) >= 0 and max(x1, y1) <= 64
            assert x1 - x0 == y1 - y0 and lo <= x1 - x0 <= hi
        for i, a in enumerate(scene):
            for b in scene[i + 1:]:
                assert any(before(p, q, ax) for p, q in ((a, b), (b, a)) for ax in "xy")
        image = render(scene, 64)
        for caption in scene_captions(scene):
            assert caption == " ".join(caption.split()) and caption == caption.lower()
            objs, relation = parse_caption(caption, scene)
            assert sorted(map(id, objs)) == sorted(map(id, scene)), caption
            if relation:
                axis, order = relation[0], [objs[int(k)] for k in relation[1:]]
                assert all(before(p, q, axis) for p, q in pairwise(order)), caption
                if len(scene) == 2:  # side by side overlap in y, stacked in x: unambiguous
                    other = "y" if axis == "x" else "x"
                    assert overlap(*scene, other) >= min(o.box[2] - o.box[0] for o in scene) / 2
                layouts.add((len(scene), axis))
            for o in objs:
                assert colour_at(image, o) == shapes.COLOURS[o.colour], (caption, o)
                assert shape_of(image, o) == o.shape, (caption, o)
        covered = np.zeros((64, 64), dtype=bool)
        for o in scene:
            covered[o.box[1]:o.box[3], o.box[0]:o.box[2]] = True
        assert (np.asarray(image)[~covered] == 0).all()
    assert layouts == {(2, "x"), (2, "y"), (3, "x")}


def test_scene_sizes_scale_with_the_image():
    rng = random.Random(1)
    for _ in range(50):
        for o in make_scene(rng, 128):
            lo, hi = shapes.SIZE_RANGES[o.size]
            assert 2 * lo <= o.box[2] - o.box[0] <= 2 * hi and max(o.box) <= 128
    with pytest.raises(DataError, match="image_size must be at least"):
        make_scene(rng, 16)


def test_scene_objects_round_trip_and_are_found_by_phrase():
    scene = make_scene(random.Random(5))
    assert [ShapeObject.from_dict(json.loads(json.dumps(o.to_dict()))) for o in scene] == scene
    o = scene[0]
    assert object_for_phrase(scene, o.size, o.colour, o.shape) is o
    assert object_for_phrase(scene, "large", "purple", "circle") is None
    with pytest.raises(DataError, match="not a shapes scene object"):
        ShapeObject.from_dict({"colour": "red", "shape": "circle", "size": "small"})


COUNTS = {"train": 24, "val": 6, "test": 4}


def test_write_shapes_is_deterministic_and_readable(tmp_path):
    a = shapes.write_shapes(tmp_path / "a", COUNTS, seed=7)
    b = shapes.write_shapes(tmp_path / "b", COUNTS, seed=7)
    c = shapes.write_shapes(tmp_path / "c", COUNTS, seed=8)
    assert a == tmp_path / "a" / "dataset.json"
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    pngs = sorted(p.name for p in (tmp_path / "a" / "images").iterdir())
    assert pngs == sorted(p.name for p in (tmp_path / "b" / "images").iterdir())
    assert len(pngs) == 34 and "val_00005.png" in pngs
    for name in pngs:
        assert (tmp_path / "a" / "images" / name).read_bytes() == \
            (tmp_path / "b" / "images" / name).read_bytes()
    data = read_karpathy(a, tmp_path / "a" / "images")
    assert [len(data[s]) for s in ("train", "valid", "test")] == [24, 6, 4]
    record = data["valid"][2]
    assert record.path == tmp_path / "a" / "images" / "val_00002.png"
    scene = [ShapeObject.from_dict(d) for d in record.scene or ()]
    assert list(record.captions) == scene_captions(scene)
    assert np.array_equal(read_pixels(record.path, 64), np.asarray(render(scene, 64)))
    assert json.loads(a.read_text())["settings"] == {"counts": COUNTS, "seed": 7,
                                                     "image_size": 64, "version": 1}


def test_write_shapes_reuses_a_dataset_with_the_same_settings(tmp_path, monkeypatch):
    out = tmp_path / "shapes"
    json_path = shapes.write_shapes(out, COUNTS)
    png = out / "images" / "train_00000.png"
    stamps = json_path.stat().st_mtime_ns, png.stat().st_mtime_ns
    monkeypatch.setattr(shapes, "render", lambda *a: pytest.fail("regenerated"))
    assert shapes.write_shapes(out, dict(COUNTS)) == json_path
    assert (json_path.stat().st_mtime_ns, png.stat().st_mtime_ns) == stamps
    monkeypatch.undo()
    shapes.write_shapes(out, {"train": 3}, seed=1)
    assert sorted(p.name for p in (out / "images").iterdir()) == [
        "train_00000.png", "train_00001.png", "train_00002.png"]
    left = sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".lock")
    assert left == ["shapes"]  # no temp dirs left (the lock file stays)


def test_an_interrupted_write_leaves_nothing_half_written(tmp_path, monkeypatch):
    real_render, calls = shapes.render, []

    def failing_render(scene, image_size):
        calls.append(1)
        if len(calls) > 5:
            raise KeyboardInterrupt
        return real_render(scene, image_size)

    monkeypatch.setattr(shapes, "render", failing_render)
    with pytest.raises(KeyboardInterrupt):
        shapes.write_shapes(tmp_path / "new", COUNTS)
    assert [p for p in tmp_path.iterdir() if p.suffix != ".lock"] == []
    monkeypatch.undo()
    old = shapes.write_shapes(tmp_path / "old", {"train": 2})
    before_bytes = old.read_bytes()
    calls.clear()
    monkeypatch.setattr(shapes, "render", failing_render)
    with pytest.raises(KeyboardInterrupt):
        shapes.write_shapes(tmp_path / "old", COUNTS)  # new settings, interrupted: old one survives
    assert old.read_bytes() == before_bytes
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".lock") == ["old"]


def test_write_shapes_will_not_replace_a_foreign_directory(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(DataError) as e:
        shapes.write_shapes(tmp_path / "mine", COUNTS)
    one_line_error(e, str(tmp_path / "mine"), "is not a shapes dataset")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    (tmp_path / "file").write_text("")
    with pytest.raises(DataError, match="is not a shapes dataset"):
        shapes.write_shapes(tmp_path / "file", COUNTS)
    with pytest.raises(DataError, match="count >= 0"):
        shapes.write_shapes(tmp_path / "x", {"train": -1})


def test_attended_words_by_hand():
    # One small red square, box x 13..25, y 40..52 at 64 pixels: on the 8x8 grid
    # (cells of 8 pixels, centres at 4, 12, 20, ...) only the centres (20, 44) lie in it.
    scene = [ShapeObject("red", "square", "small", (13, 40, 25, 52))]
    words = ["a", "small", "red", "square"]
    attention = np.zeros((len(words) + 1, 64))
    attention[2, 5 * 8 + 2] = 0.7  # "red": row 5, column 2 -> (20, 44), inside
    attention[2, 0] = 0.3
    attention[3, 5 * 8 + 1] = 0.6  # "square": column 1 -> (12, 44), 1 pixel left of the box
    attention[3, 5 * 8 + 2] = 0.4
    found = shapes.attended_words(words, attention, scene, (8, 8), 64)
    assert [(w.kind, w.hit) for w in found] == [("colour", True), ("shape", False)]
    assert found[0].distance == 0 and found[1].distance == pytest.approx(1.0)
    assert [w.mass for w in found] == pytest.approx([0.7, 0.4])
    assert shapes.attention_hits(words, attention, scene, (8, 8), 64) == (1, 2)
    # A phrase naming no object of the scene is a miss, at no distance.
    [miss, _] = shapes.attended_words(["a", "small", "blue", "square"], attention, scene,
                                      (8, 8), 64)
    assert not miss.hit and miss.distance == float("inf") and miss.mass == 0
