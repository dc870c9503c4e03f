#!/usr/bin/env python
"""Build NLVR (v1) or NLVR2 for I2M2: sentences, labels and images (rendered or read).

NLVR (Suhr et al., 2017; github.com/lil-lab/nlvr) pairs a sentence with a synthetic image of
three boxes of coloured shapes; the label says whether the sentence is true of the image.
Every example's JSON line carries its world as ``structured_rep``: three boxes, each a list
of objects with ``type`` (square, circle, triangle), ``color`` (Yellow, Black, #0099ff),
``x_loc``, ``y_loc`` (top-left corner inside the 100 x 100 box) and ``size`` (10, 20, 30).
This script draws those worlds the way the published PNGs are drawn, so that the training
split, whose PNGs are not here, gets images too:

  * a 400 x 100 canvas: boxes at x = 0, 150, 300, each 100 wide, light grey (211, 211, 211),
    separated by grey (128, 128, 128) bars;
  * a square fills [x, x+size) x [y, y+size); a circle is inscribed in that square; a
    triangle has its apex at the middle of the top edge and its base on the bottom edge;
  * objects drawn in list order, anti-aliased with 4 x 4 samples per pixel (the published
    edge pixels hold multiples of 1/16 of the object's colour).

Over the 989 dev worlds this agrees with the published PNGs (box order 0, the order of
``structured_rep``) on 99.82% of pixels exactly and 99.91% within 8 grey levels; what is
left are circle edges, which the original renderer approximates slightly differently. The
published images come in 6 box orders per example (``<split>-<identifier>-<order>.png``);
the label holds for every order, so one rendering, in the given order, is kept.

Input (``--raw``): ``dev.json``, ``test.json`` and ``train.json`` (or, where only part of the
training split is at hand, ``train_partial.json``: the same fields without ``evals``), one
JSON object a line; ``images-dev-test.tar`` (optional) with the published dev and test PNGs,
read in memory (nothing is extracted) to measure the renderer's agreement, written to
``metadata.json``. Any malformed line, unknown label, unknown shape or colour, or world
without its published image stops the run with one line naming the file, the line and the
field.

Output (``--out``, a folder written atomically; an existing one only with ``--overwrite``):
  train.jsonl, valid.jsonl, test.jsonl   identifier, sentence, label (1 true, 0 false), directory
  train_images.npy, ...                 (N, 100 / d, 400 / d, 3) uint8, d = --downsample
  metadata.json                         counts, label balance, majority baseline, renderer agreement

The dev split is the validation split (model selection); test is reported.

NLVR2 (Suhr et al., 2019; ``nlvr2/data/`` of the same repository) pairs a sentence with two
real photographs, left and right. Its JSON lines carry ``identifier`` (``dev-850-0-1``: split,
set, pair, sentence), ``sentence``, ``label`` ("True"/"False"), ``left_url``, ``right_url``
and, in ``train.json``, ``directory``; no ``structured_rep``. ``--dataset auto`` (the default)
reads the first line of ``dev.json`` to tell the two apart. NLVR2 input (``--raw``):
``train.json``, ``dev.json`` (the validation split) and ``test1.json`` (the test split), and
the photographs the user downloaded, under ``--images`` (default ``<raw>/images``) as
published: ``images/train/<directory>/<pair>-img0.png`` (left) and ``...-img1.png`` (right),
``images/dev/...``, ``images/test1/...``, where ``<pair>`` is the identifier without its last
``-<sentence>``. Every ``*-img0.png`` / ``*-img1.png`` under the folder is indexed by its file
name, so any layout will do. Each photograph is read as RGB and resized, whole, to a
``--image-size`` square (bilinear); the output is as for v1, but with
``{split}_images.npy`` of shape (N, 2, S, S, 3) uint8 (left, right). A missing photograph stops
the run (naming the identifier and the file expected) unless ``--skip-missing`` leaves its
examples out (counted per split in ``metadata.json``); an unreadable one stops it, named.
``--downsample`` and ``--no-image-check`` concern v1 only, ``--image-size`` NLVR2 only.

    python data_scripts/prepare_nlvr.py --raw ../shared/data/nlvr/nlvr1 --out data/nlvr
    python data_scripts/prepare_nlvr.py --raw DIR_WITH_NLVR2_JSON_AND_images --out data/nlvr2 --image-size 64
"""

from __future__ import annotations

import functools
import io
import json
import sys
import tarfile
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from tqdm.auto import tqdm

from i2m2kit.io import (PrepareError, allocated_memmap, atomic_folder, check_free_space, check_output,
                        prepare_output, script_main, script_parser)

FORMAT_VERSION = 1
OUTPUTS = ("metadata.json", "*.jsonl", "*_images.npy")  # all --overwrite may replace
HEIGHT, WIDTH, BOX, GAP = 100, 400, 100, 50  # the published canvas: three 100 x 100 boxes, 50-pixel bars
BOXES = 3
BACKGROUND = (211, 211, 211)
SEPARATOR = (128, 128, 128)
COLOURS = {"Yellow": (255, 255, 0), "Black": (0, 0, 0), "#0099ff": (0, 153, 255)}
SHAPES = ("square", "circle", "triangle")
LABELS = {"false": 0, "true": 1}
SAMPLES = 4  # anti-aliasing: SAMPLES x SAMPLES points per pixel, as the published images
SPLITS = {"train": ("train.json", "train_partial.json"), "valid": ("dev.json",), "test": ("test.json",)}
IMAGE_SPLITS = {"valid": "dev", "test": "test"}  # published PNGs: <name>/images/<dir>/<name>-<id>-0.png
TOLERANCE = 8  # grey levels: a pixel "agrees within tolerance" when no channel differs by more
DOWNSAMPLES = (1, 2, 5, 10)  # factors that keep every box edge on a pixel boundary


DATASETS = ("auto", "nlvr", "nlvr2")
NLVR2_SPLITS = {"train": "train.json", "valid": "dev.json", "test": "test1.json"}
NLVR2_IMAGE_FOLDERS = {"train": "train", "valid": "dev", "test": "test1"}  # under the images folder
SIDES = ("img0", "img1")  # left, right


# ---------------------------------------------------------------------- the renderer


@functools.lru_cache(maxsize=None)
def coverage(shape: str, size: int) -> np.ndarray:
    """(size, size) fraction of each pixel an object covers, from SAMPLES^2 points per pixel.

    Positions are whole pixels, so one mask per (shape, size) serves every object."""
    offsets = (np.arange(size * SAMPLES) + 0.5) / SAMPLES  # sample coordinates inside the square
    x, y = np.meshgrid(offsets, offsets)
    half = size / 2
    if shape == "square":
        inside = np.ones_like(x, dtype=bool)
    elif shape == "circle":
        inside = (x - half) ** 2 + (y - half) ** 2 <= half ** 2
    elif shape == "triangle":  # apex at the top middle, base at the bottom: widens by 1 per 2 rows
        inside = np.abs(x - half) <= y / 2
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return inside.reshape(size, SAMPLES, size, SAMPLES).mean((1, 3))


@functools.lru_cache(maxsize=1)
def empty_canvas() -> np.ndarray:
    """Three light-grey boxes between grey bars, before any object is drawn."""
    canvas = np.empty((HEIGHT, WIDTH, 3), dtype=np.float64)
    canvas[:] = SEPARATOR
    for b in range(BOXES):
        canvas[:, b * (BOX + GAP): b * (BOX + GAP) + BOX] = BACKGROUND
    return canvas


def render(world: Sequence[Sequence[dict]]) -> np.ndarray:
    """The published 100 x 400 RGB picture (uint8) of a validated ``structured_rep``."""
    canvas = empty_canvas().copy()
    for b, objects in enumerate(world):
        box = canvas[:, b * (BOX + GAP): b * (BOX + GAP) + BOX]
        for o in objects:  # later objects cover earlier ones
            x, y, s = o["x_loc"], o["y_loc"], o["size"]
            alpha = coverage(o["type"], s)[:, :, None]
            region = box[y:y + s, x:x + s]
            region += (np.array(COLOURS[o["color"]], dtype=np.float64) - region) * alpha
    return np.rint(canvas).astype(np.uint8)  # halves to even, as the published pixels


def downsample(image: np.ndarray, factor: int) -> np.ndarray:
    """Average ``factor`` x ``factor`` blocks (what a camera of coarser pixels would see)."""
    if factor == 1:
        return image
    total = np.zeros((image.shape[0] // factor, image.shape[1] // factor, image.shape[2]), np.float32)
    for dy in range(factor):  # a sum of strided views: much faster than a mean over reshaped axes
        for dx in range(factor):
            total += image[dy::factor, dx::factor]
    return (total / factor ** 2 + 0.5).astype(np.uint8)


def agreement(rendered: np.ndarray, published: np.ndarray) -> tuple[int, int]:
    """(pixels equal, pixels within TOLERANCE in every channel) of two (H, W, 3) pictures."""
    diff = np.abs(rendered.astype(np.int16) - published[:, :, :3].astype(np.int16))
    return int((diff == 0).all(-1).sum()), int((diff <= TOLERANCE).all(-1).sum())


# ---------------------------------------------------------------------- reading and checking


def _integer(value, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise PrepareError(f"{where}: expected an integer in [{low}, {high}], got {value!r}")
    return value


def check_world(world, where: str) -> list[list[dict]]:
    """A ``structured_rep``, checked field by field: 3 boxes of objects inside their box."""
    if not isinstance(world, list) or len(world) != BOXES:
        raise PrepareError(f"{where}: expected a list of {BOXES} boxes, got {type(world).__name__}"
                           f"{f' of {len(world)}' if isinstance(world, list) else ''}")
    for b, objects in enumerate(world):
        if not isinstance(objects, list):
            raise PrepareError(f"{where}[{b}]: expected a list of objects, got {type(objects).__name__}")
        for i, o in enumerate(objects):
            at = f"{where}[{b}][{i}]"
            if not isinstance(o, dict):
                raise PrepareError(f"{at}: expected an object, got {type(o).__name__}")
            for key in ("type", "color", "x_loc", "y_loc", "size"):
                if key not in o:
                    raise PrepareError(f"{at}: no field {key!r}")
            if o["type"] not in SHAPES:
                raise PrepareError(f"{at}.type: unknown shape {o['type']!r} (expected one of {', '.join(SHAPES)})")
            if o["color"] not in COLOURS:
                raise PrepareError(f"{at}.color: unknown colour {o['color']!r} (expected one of {', '.join(COLOURS)})")
            size = _integer(o["size"], f"{at}.size", 1, BOX)
            _integer(o["x_loc"], f"{at}.x_loc", 0, BOX - size)  # the object lies inside its box
            _integer(o["y_loc"], f"{at}.y_loc", 0, BOX - size)
    return world


def checked_lines(path: Path, fields: Sequence[str], published: tuple[str, str]) -> Iterator[tuple[str, int, dict, int]]:
    """(where, line number, example, label 0/1) for each line of an NLVR or NLVR2 JSON file,
    its ``fields``, non-empty sentence and label (``published``: how the file spells false
    and true; any case is accepted) checked."""
    seen: dict[str, int] = {}  # identifier -> line: a repeated one means files run together
    try:
        f = open(path, "rb")  # bytes, decoded line by line: a non-UTF-8 line is named
    except OSError as e:
        raise PrepareError(f"{path}: cannot read it ({e.strerror or e})") from None
    with f:
        for number, data in enumerate(f, start=1):
            where = f"{path.name} line {number}"
            try:
                line = data.decode("utf-8")
            except UnicodeDecodeError as e:
                raise PrepareError(f"{where}: not UTF-8 text ({e.reason} at byte {e.start + 1})") from None
            if not line.strip():
                continue
            try:
                example = json.loads(line)
            except json.JSONDecodeError as e:
                raise PrepareError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(example, dict):
                raise PrepareError(f"{where}: expected a JSON object, got {type(example).__name__}")
            for key in fields:
                if key not in example:
                    raise PrepareError(f"{where}: no field {key!r}")
            if not isinstance(example["sentence"], str) or not example["sentence"].strip():
                raise PrepareError(f"{where}: field 'sentence': expected a non-empty string, got {example['sentence']!r}")
            label = example["label"]
            if not isinstance(label, str) or label.lower() not in LABELS:
                raise PrepareError(f"{where}: field 'label': unknown label {label!r} "
                                   f"(expected {published[1]!r} or {published[0]!r})")
            identifier = str(example.get("identifier"))
            if identifier in seen:
                raise PrepareError(f"{where}: identifier {identifier!r} is also on line {seen[identifier]}")
            seen[identifier] = number
            yield where, number, example, LABELS[label.lower()]


def read_examples(path: Path) -> Iterator[dict]:
    """Each line of an NLVR JSON file, checked: identifier, sentence, label, structured_rep."""
    for where, number, example, label in checked_lines(path, ("identifier", "sentence", "label", "structured_rep"),
                                                       ("false", "true")):
        yield {"identifier": str(example["identifier"]), "sentence": example["sentence"].strip(),
               "label": label, "directory": str(example.get("directory", "")),
               "world": check_world(example["structured_rep"], f"{where}: field 'structured_rep'"),
               "line": number}


def check_disjoint(splits: dict[str, list[dict]], files: dict[str, Path]) -> None:
    """Refuse an identifier in two splits: model selection or training would see test examples
    (a repeat within one file is refused by ``checked_lines``)."""
    first: dict[str, tuple[str, int]] = {}  # identifier -> (split, line) where first seen
    for split, examples in splits.items():
        for x in examples:
            seen = first.setdefault(x["identifier"], (split, x["line"]))
            if seen[0] != split:
                raise PrepareError(f"{files[split].name} line {x['line']}: identifier {x['identifier']!r} is also in "
                                   f"{files[seen[0]].name} line {seen[1]} (one example in two splits)")


def split_file(raw: Path, split: str) -> Path:
    for name in SPLITS[split]:
        if (raw / name).is_file():
            return raw / name
    raise PrepareError(f"{raw}: no {' or '.join(SPLITS[split])} (the NLVR v1 {split} split)")


class PublishedImages:
    """The PNGs of ``images-dev-test.tar``, read from the archive in memory (nothing extracted)."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.tar = tarfile.open(path)
            self.members = {m.name.lstrip("./"): m for m in self.tar.getmembers() if m.isfile()}
        except (tarfile.TarError, OSError) as e:
            reason = " ".join(str(e).split())  # tarfile lists one reason a line
            raise PrepareError(f"{path.name}: not a readable tar archive ({reason})") from None

    def image(self, split: str, example: dict, source: Path) -> np.ndarray:
        from PIL import Image

        name = f"{split}/images/{example['directory']}/{split}-{example['identifier']}-0.png"
        member = self.members.get(name)
        if member is None:
            raise PrepareError(f"{self.path.name}: no image {name} for {source.name} line {example['line']} "
                               f"(identifier {example['identifier']})")
        try:
            picture = np.asarray(Image.open(io.BytesIO(self.tar.extractfile(member).read())).convert("RGB"))
        except OSError as e:
            raise PrepareError(f"{self.path.name}: {name} is not a readable PNG ({e})") from None
        if picture.shape != (HEIGHT, WIDTH, 3):
            raise PrepareError(f"{self.path.name}: {name} is {picture.shape[1]} x {picture.shape[0]}, "
                               f"expected {WIDTH} x {HEIGHT}")
        return picture


# ---------------------------------------------------------------------- the whole run


def prepare(raw: str | Path, out: str | Path, downsample_factor: int = 2, check_images: bool = True,
            overwrite: bool = False, progress: bool = True, dataset: str = "auto",
            images: str | Path | None = None, image_size: int = 64, skip_missing: bool = False) -> dict:
    """Read the NLVR (v1) or NLVR2 files in ``raw``, write the prepared folder ``out``; return
    its metadata. ``dataset``: "auto" (from the first line of ``dev.json``), "nlvr" or "nlvr2".
    v1 only: ``downsample_factor``, ``check_images``; NLVR2 only: ``images``, ``image_size``,
    ``skip_missing``."""
    raw, out = Path(raw), Path(out)
    # every setting first, whichever data set it concerns
    if dataset not in DATASETS:
        raise PrepareError(f"dataset must be one of {', '.join(DATASETS)}, got {dataset!r}")
    if downsample_factor not in DOWNSAMPLES:
        raise PrepareError(f"downsample must be one of {DOWNSAMPLES} (box edges on whole pixels), got {downsample_factor}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or not 4 <= image_size <= 1024:
        raise PrepareError(f"image size must be an integer in [4, 1024], got {image_size!r}")
    prepare_output(out)  # now, not after the work: unwritable, a mount point, a loop; killed runs' leftovers gone
    if not raw.is_dir():  # before the output check resolves it (a looping link would fail there)
        raise PrepareError(f"{raw}: no such folder")
    if dataset == "nlvr2" or (dataset == "auto" and detect_dataset(raw) == "nlvr2"):
        return prepare_nlvr2(raw, out, images, image_size, skip_missing, overwrite, progress)
    check_output(out, overwrite, [raw], OUTPUTS)
    files = {split: split_file(raw, split) for split in SPLITS}
    archive = raw / "images-dev-test.tar"
    published = PublishedImages(archive) if check_images and archive.is_file() else None

    splits = {}  # every line of every split checked before any picture is drawn
    for split, source in files.items():
        splits[split] = list(read_examples(source))
        if not splits[split]:
            raise PrepareError(f"{source.name}: no examples")
    check_disjoint(splits, files)
    height, width = HEIGHT // downsample_factor, WIDTH // downsample_factor
    # before the work: the pictures, the .jsonl files (smaller than their .json) and metadata.json
    need = sum(map(len, splits.values())) * height * width * 3 + sum(f.stat().st_size for f in files.values())
    check_free_space(out, need + 2 ** 20, "the prepared NLVR data")

    images, checks = {}, {}
    for split, source in files.items():
        examples = splits[split]
        pictures = np.empty((len(examples), height, width, 3), np.uint8)
        equal = close = total = 0
        for i, example in enumerate(tqdm(examples, desc=f"{split} ({source.name})", disable=not progress)):
            picture = render(example["world"])
            if published is not None and split in IMAGE_SPLITS:
                e, c = agreement(picture, published.image(IMAGE_SPLITS[split], example, source))
                equal, close, total = equal + e, close + c, total + picture[:, :, 0].size
            pictures[i] = downsample(picture, downsample_factor)
        if total:
            checks[split] = {"published": IMAGE_SPLITS[split], "examples": len(examples),
                             "pixels_equal": equal / total, f"pixels_within_{TOLERANCE}": close / total}
        images[split] = pictures

    metadata = {
        "format_version": FORMAT_VERSION,
        "dataset": "nlvr",
        "source": {split: {"file": f.name, "bytes": f.stat().st_size} for split, f in files.items()},
        "partial_train": files["train"].name != SPLITS["train"][0],
        "counts": {s: len(e) for s, e in splits.items()},
        "true_fraction": {s: float(np.mean([x["label"] for x in e])) for s, e in splits.items()},
        "majority_baseline": {s: float(max(np.mean([x["label"] for x in e]), 1 - np.mean([x["label"] for x in e])))
                              for s, e in splits.items()},
        "distinct_sentences": {s: len({x["sentence"] for x in e}) for s, e in splits.items()},
        "labels": {"0": "false", "1": "true"},
        "image": {"downsample": downsample_factor, "height": HEIGHT // downsample_factor,
                  "width": WIDTH // downsample_factor, "channels": "RGB, uint8, (N, H, W, 3)",
                  "boxes_at_x": [b * (BOX + GAP) // downsample_factor for b in range(BOXES)],
                  "box_size": BOX // downsample_factor, "box_order": "as in structured_rep (published order 0)"},
        "renderer": {"anti_aliasing_samples_per_pixel": SAMPLES * SAMPLES, "colours": COLOURS,
                     "agreement_with_published": checks or None},
        "splits": {"valid": "dev.json (model selection)", "test": "test.json (reported)"},
    }
    with atomic_folder(out) as tmp:  # a full disk meanwhile: one line, nothing left
        for split, examples in splits.items():
            with open(tmp / f"{split}.jsonl", "w", encoding="utf-8") as f:
                for x in examples:
                    f.write(json.dumps({k: x[k] for k in ("identifier", "sentence", "label", "directory")}) + "\n")
            np.save(tmp / f"{split}_images.npy", images[split])
        (tmp / "metadata.json").write_text(json.dumps(metadata, indent=2))
    return metadata


# ---------------------------------------------------------------------- NLVR2


def detect_dataset(raw: Path) -> str:
    """"nlvr2" when the first line of ``raw/dev.json`` is an NLVR2 example (``left_url``, no
    ``structured_rep``), else "nlvr" (whose own checks then name what is wrong)."""
    dev = Path(raw) / "dev.json"
    if not dev.is_file():
        return "nlvr"
    try:
        with open(dev, encoding="utf-8", errors="replace") as f:  # only a guess: the checks name bad bytes
            example = json.loads(next((line for line in f if line.strip()), ""))
    except (OSError, json.JSONDecodeError):  # the reader of NLVR (v1) names what is wrong
        return "nlvr"
    return "nlvr2" if isinstance(example, dict) and "left_url" in example and "structured_rep" not in example else "nlvr"


def pair_name(identifier: str) -> str:
    """``dev-850-0-1`` -> ``dev-850-0``: the image pair an NLVR2 sentence is written about."""
    return identifier.rsplit("-", 1)[0]


def read_nlvr2_examples(path: Path) -> list[dict]:
    """Each line of an NLVR2 JSON file, checked: identifier, sentence, label (and directory)."""
    examples = []
    for where, number, example, label in checked_lines(path, ("identifier", "sentence", "label"), ("False", "True")):
        identifier = example["identifier"]
        if not isinstance(identifier, str) or identifier.count("-") < 2:
            raise PrepareError(f"{where}: field 'identifier': expected '<split>-<set>-<pair>-<sentence>', "
                               f"got {identifier!r}")
        examples.append({"identifier": identifier, "sentence": example["sentence"].strip(), "label": label,
                         "directory": str(example.get("directory", "")), "pair": pair_name(identifier),
                         "line": number})
    return examples


def index_images(folder: Path) -> dict[str, Path]:
    """Every ``*-img0.png`` / ``*-img1.png`` under ``folder``, by file name (first in path order)."""
    index: dict[str, Path] = {}
    for side in SIDES:
        for path in sorted(folder.rglob(f"*-{side}.png")):
            index.setdefault(path.name, path)
    return index


def expected_image(images: Path, split: str, example: dict, side: str) -> Path:
    """Where the published layout puts an example's picture (for the error message)."""
    folder = images / NLVR2_IMAGE_FOLDERS[split]
    if example["directory"]:
        folder = folder / example["directory"]
    return folder / f"{example['pair']}-{side}.png"


def read_photo(path: Path, size: int) -> np.ndarray:
    """A photograph as an RGB ``size`` x ``size`` uint8 square: the whole picture, resized bilinearly."""
    from PIL import Image

    try:
        with Image.open(path) as picture:
            return np.asarray(picture.convert("RGB").resize((size, size), Image.BILINEAR))
    except (OSError, SyntaxError, ValueError) as e:  # truncated, not an image, broken chunks
        raise PrepareError(f"{path}: not a readable image ({e})") from None


def prepare_nlvr2(raw: Path, out: Path, images: str | Path | None = None, image_size: int = 64,
                  skip_missing: bool = False, overwrite: bool = False, progress: bool = True) -> dict:
    """NLVR2: the JSON files of ``raw`` and the photographs under ``images`` (default
    ``raw/images``) -> the prepared folder ``out`` (image pairs (N, 2, S, S, 3)); its metadata.
    Called by ``prepare``, which has checked the settings, ``out``'s location and ``raw``."""
    raw, out = Path(raw), Path(out)
    images = Path(images) if images is not None else raw / "images"
    files = {}
    for split, name in NLVR2_SPLITS.items():
        if not (raw / name).is_file():
            raise PrepareError(f"{raw}: no {name} (the NLVR2 {split} split)")
        files[split] = raw / name
    if not images.is_dir():  # before the output check resolves it (a looping link would fail there)
        raise PrepareError(f"{images}: no such folder (the NLVR2 photographs: images/train/<directory>/"
                           f"<pair>-img0.png, images/dev/..., images/test1/...)")
    check_output(out, overwrite, [raw, images], OUTPUTS)
    splits = {}
    for split, source in files.items():  # every line checked before any picture is read
        splits[split] = read_nlvr2_examples(source)
        if not splits[split]:
            raise PrepareError(f"{source.name}: no examples")
    check_disjoint(splits, files)
    index = index_images(images)

    skipped = {}
    for split, examples in splits.items():
        kept = []
        for x in examples:
            missing = [s for s in SIDES if f"{x['pair']}-{s}.png" not in index]
            if not missing:
                kept.append(x)
            elif not skip_missing:
                raise PrepareError(f"{files[split].name} line {x['line']} (identifier {x['identifier']}): no image "
                                   f"{expected_image(images, split, x, missing[0])}; pass --skip-missing "
                                   f"(skip_missing=True) to leave such examples out")
        skipped[split] = len(examples) - len(kept)
        if not kept:
            raise PrepareError(f"{files[split].name}: none of its {len(examples)} examples has both images under {images}")
        splits[split] = kept
    # before the work: the pictures, the .jsonl files (smaller than their .json) and metadata.json
    need = sum(map(len, splits.values())) * 2 * image_size ** 2 * 3 + sum(f.stat().st_size for f in files.values())
    check_free_space(out, need + 2 ** 20, "the prepared NLVR2 data")

    labels = {s: [x["label"] for x in e] for s, e in splits.items()}
    metadata = {
        "format_version": FORMAT_VERSION,
        "dataset": "nlvr2",
        "source": {split: {"file": f.name, "bytes": f.stat().st_size} for split, f in files.items()},
        "images_folder": str(images),
        "partial_train": False,
        "counts": {s: len(e) for s, e in splits.items()},
        "skipped_missing_images": skipped,
        "true_fraction": {s: float(np.mean(y)) for s, y in labels.items()},
        "majority_baseline": {s: float(max(np.mean(y), 1 - np.mean(y))) for s, y in labels.items()},
        "distinct_sentences": {s: len({x["sentence"] for x in e}) for s, e in splits.items()},
        "distinct_pairs": {s: len({x["pair"] for x in e}) for s, e in splits.items()},
        "labels": {"0": "false", "1": "true"},
        "image": {"size": image_size, "height": image_size, "width": image_size, "pair": True,
                  "sides": ["left (img0)", "right (img1)"],
                  "channels": "RGB, uint8, (N, 2, S, S, 3): left, right",
                  "resize": "the whole photograph to a square, bilinear"},
        "renderer": None,
        "splits": {"valid": "dev.json (model selection)", "test": "test1.json (reported)"},
    }

    with atomic_folder(out) as tmp:  # a full disk meanwhile: one line, nothing left
        for split, examples in splits.items():
            pictures = allocated_memmap(tmp / f"{split}_images.npy", np.uint8, (len(examples), 2, image_size, image_size, 3))
            first: dict[str, int] = {}  # a pair is read once, however many sentences describe it
            for i, x in enumerate(tqdm(examples, desc=f"{split} ({files[split].name})", disable=not progress)):
                if x["pair"] in first:
                    pictures[i] = pictures[first[x["pair"]]]
                    continue
                first[x["pair"]] = i
                for s, side in enumerate(SIDES):
                    pictures[i, s] = read_photo(index[f"{x['pair']}-{side}.png"], image_size)
            pictures.flush()
            del pictures
            with open(tmp / f"{split}.jsonl", "w", encoding="utf-8") as f:
                for x in examples:
                    f.write(json.dumps({k: x[k] for k in ("identifier", "sentence", "label", "directory")}) + "\n")
        (tmp / "metadata.json").write_text(json.dumps(metadata, indent=2))
    return metadata


@script_main
def main(argv: Sequence[str] | None = None) -> int:
    parser = script_parser(__doc__, "folder to write the prepared data to")
    parser.add_argument("--raw", required=True, type=Path,
                        help="folder of the NLVR v1 JSON files (and images-dev-test.tar), or of the NLVR2 ones")
    parser.add_argument("--downsample", type=int, default=2, choices=DOWNSAMPLES,
                        help="keep the images at 1/d of the published 100 x 400 (default 2: 50 x 200)")
    parser.add_argument("--no-image-check", action="store_true",
                        help="do not compare the rendering with the published PNGs")
    parser.add_argument("--dataset", choices=DATASETS, default="auto",
                        help="NLVR (v1) or NLVR2 (default auto: from the first line of dev.json)")
    parser.add_argument("--images", type=Path, default=None,
                        help="NLVR2: the folder of the downloaded photographs (default <raw>/images)")
    parser.add_argument("--image-size", type=int, default=64,
                        help="NLVR2: resize each photograph to this square (default 64)")
    parser.add_argument("--skip-missing", action="store_true",
                        help="NLVR2: leave out the examples whose photographs are missing (counted in metadata.json)")
    args = parser.parse_args(argv)
    meta = prepare(args.raw, args.out, args.downsample, check_images=not args.no_image_check,
                   overwrite=args.overwrite, progress=not args.no_progress, dataset=args.dataset,
                   images=args.images, image_size=args.image_size, skip_missing=args.skip_missing)
    counts = ", ".join(f"{s} {n}" for s, n in meta["counts"].items())
    if meta["dataset"] == "nlvr2":
        skipped = sum(meta["skipped_missing_images"].values())
        print(f"wrote {args.out}: NLVR2, {counts} examples, image pairs {args.image_size} x {args.image_size}"
              f"{f'; {skipped} examples left out for missing images' if skipped else ''}")
        return 0
    checks = meta["renderer"]["agreement_with_published"] or {}
    agree = "; ".join(f"renderer agrees with the published {c['published']} PNGs on {c['pixels_equal']:.2%} "
                      f"of pixels" for c in checks.values())
    print(f"wrote {args.out}: {counts} examples{' (partial train split)' if meta['partial_train'] else ''}"
          f"{'; ' + agree if agree else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
