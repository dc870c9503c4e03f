"""NLVR (v1): is a sentence true of a picture of three boxes of shapes? NLVR2: of a pair of photographs?

The prepared folder (``data_scripts/prepare_nlvr.py``: sentences, labels, and images rendered
from the published structured worlds (v1) or read from the user's downloaded photograph
pairs (NLVR2)), and the experts (``i2m2kit.vision_language``: a BERT-style text encoder,
cross-attention or concatenation fusion, own encoders or one frozen shared backbone) with
the data set's image encoder:

* ``image`` expert: a small CNN applied to each of the three boxes with shared weights, its
  cells becoming regions (coordinates are two extra input channels, so a region knows where
  in its box it lies). No region knows which box it is in: the label holds for every box
  order (the dataset publishes six orders per example), so the expert is built not to care.
* NLVR2 ``image`` expert (``PairEncoder``): one small CNN applied to the left and the right
  photograph with shared weights (the published NLVR2 setting: one image encoder for both),
  the cells of both becoming regions, each with a learned left or right embedding added (the
  sentences say "the left image", "the right image").

Each expert ends in a 2-class head (``false``, ``true``).

    data = nlvr.load("data/nlvr")                        # splits train / valid (dev) / test
    model = nlvr.build_model(data)                       # v1 or NLVR2, as the data is
    recipe = nlvr.recipe().replace(monitor=nlvr.selection_metric(data))
    ik.fit(model, data.splits["train"], data.splits["valid"], **recipe.fit_arguments())
"""

from __future__ import annotations

import functools
import json
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import contributions, plots, vision_language
from ..data import TensorData
from ..experts import I2M2
from ..inference import Predictions
from ..io import read_metadata
from ..protocol import Recipe, defined_metric
from ..runner import find_folder, prepare_data
from ..vision_language import TextSpec, tokenize

SPLITS = ("train", "valid", "test")
CLASS_NAMES = ("false", "true")
BOXES, BOX, GAP = 3, 100, 50  # the published canvas: three 100-pixel boxes, 50-pixel bars


# ---------------------------------------------------------------------- data


@dataclass
class NLVRData:
    splits: dict[str, TensorData]  # inputs {"image": (N, 3, H, W) float in [0, 1], "text": (N, L) int64}
    sentences: dict[str, list[str]]  # NLVR2: "image" (N, 2, 3, S, S) uint8, left and right
    identifiers: dict[str, list[str]]
    text: TextSpec
    metadata: dict[str, Any]
    dataset: str = "nlvr"  # "nlvr" (v1) or "nlvr2"


def metadata(path: str | Path) -> dict[str, Any]:
    return read_metadata(path, f"python data_scripts/prepare_nlvr.py --raw DIR --out {path}")


def read_split(path: str | Path, split: str, pair: bool = False) -> tuple[list[dict], np.ndarray]:
    """The examples (identifier, sentence, label) and uint8 images (N, H, W, 3) of a split;
    ``pair`` (NLVR2): image pairs (N, 2, S, S, 3), left and right."""
    path = Path(path)
    examples = [json.loads(line) for line in (path / f"{split}.jsonl").read_text(encoding="utf-8").splitlines() if line]
    images = np.load(path / f"{split}_images.npy", mmap_mode="r")
    if pair:
        if len(images) != len(examples) or images.ndim != 5 or images.shape[1] != 2 or images.shape[-1] != 3:
            raise ValueError(f"{path}: {split}_images.npy has shape {images.shape}, expected ({len(examples)}, 2, S, S, 3)")
    elif len(images) != len(examples) or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{path}: {split}_images.npy has shape {images.shape}, expected ({len(examples)}, H, W, 3)")
    return examples, images


def image_tensor(images: np.ndarray, factor: int) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H / factor, W / factor) in [0, 1], block-averaged."""
    x = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).float().div_(255)  # a copy: the file is read-only
    return F.avg_pool2d(x, factor) if factor > 1 else x


def pair_tensor(images: np.ndarray, factor: int, chunk: int = 1024) -> torch.Tensor:
    """uint8 (N, 2, S, S, 3) -> uint8 (N, 2, 3, S / factor, S / factor), block-averaged.

    Kept as uint8 (``GridEncoder`` takes it): a quarter of the memory of floats."""
    n, _, size = images.shape[:3]
    out = torch.empty((n, 2, 3, size // factor, size // factor), dtype=torch.uint8)
    for start in range(0, n, chunk):  # a chunk at a time: the file may be larger than the floats fit
        x = torch.from_numpy(np.array(images[start:start + chunk])).permute(0, 1, 4, 2, 3)
        if factor > 1:
            x = F.avg_pool2d(x.flatten(0, 1).float(), factor).add_(0.5).floor_().reshape(-1, 2, 3, *out.shape[-2:])
        out[start:start + chunk] = x
    return out


def pair_factor(prepared: int, downsample: int | None, image_size: int | None) -> int:
    """NLVR2: the block-averaging factor of ``downsample`` (a factor) or ``image_size`` (a size)."""
    if downsample is not None and image_size is not None and downsample * image_size != prepared:
        raise ValueError(f"downsample={downsample} and image_size={image_size} disagree (prepared size {prepared})")
    if image_size is not None:
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1 or prepared % image_size:
            raise ValueError(f"image_size={image_size}: must divide the prepared size {prepared}")
        return prepared // image_size
    factor = downsample or 1
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1 or prepared % factor:
        raise ValueError(f"downsample={downsample}: for NLVR2 an integer factor that divides the prepared size {prepared}")
    return factor


def load(path: str | Path, text_model: str = "auto", downsample: int | None = None,
         limit: dict[str, int] | int | None = None, max_len: int | None = None,
         image_size: int | None = None) -> NLVRData:
    """The prepared splits as tensors (NLVR v1 or NLVR2, as the folder's metadata says).

    ``downsample``: v1: the images' size relative to the published 100 x 400 (default: as
    prepared); it must be a multiple of the prepared factor that keeps the box edges on whole
    pixels (it divides 50). NLVR2: an integer factor dividing the prepared size S (default 1),
    or give the size itself as ``image_size`` (it must divide S); the pairs stay uint8,
    ``(N, 2, 3, S', S')``. ``limit``: keep only the first examples of each split (an int for
    the training split, or a dict per split), for quick runs.
    """
    meta = metadata(path)
    dataset = meta.get("dataset", "nlvr")
    if dataset == "nlvr2":
        factor = pair_factor(meta["image"]["size"], downsample, image_size)
        pictures = functools.partial(pair_tensor, factor=factor)
    else:
        if image_size is not None:
            raise ValueError("image_size is for NLVR2; NLVR (v1) images are sized by downsample")
        prepared = meta["image"]["downsample"]
        downsample = downsample or prepared
        if downsample % prepared or GAP % downsample:
            raise ValueError(f"downsample={downsample}: must be a multiple of the prepared factor {prepared} "
                             f"that divides {GAP} (box edges on whole pixels)")
        pictures = functools.partial(image_tensor, factor=downsample // prepared)
    limits = {"train": limit} if isinstance(limit, int) else dict(limit or {})
    examples, images = {}, {}
    for split in SPLITS:
        examples[split], images[split] = read_split(path, split, pair=dataset == "nlvr2")
        n = limits.get(split)
        if n is not None:
            examples[split], images[split] = examples[split][:n], images[split][:n]
    sentences = {s: [x["sentence"] for x in e] for s, e in examples.items()}
    ids, spec = tokenize(sentences, text_model, max_len)
    splits = {s: TensorData({"image": pictures(images[s]), "text": ids[s]},
                            torch.tensor([x["label"] for x in examples[s]], dtype=torch.int64))
              for s in SPLITS}
    return NLVRData(splits, sentences, {s: [x["identifier"] for x in e] for s, e in examples.items()}, spec, meta,
                    dataset=dataset)


def majority_baseline(data: NLVRData) -> dict[str, float]:
    """Accuracy of always answering the training split's majority label, per split."""
    majority = int(data.splits["train"].targets.float().mean() >= 0.5)
    return {s: float((d.targets == majority).float().mean()) for s, d in data.splits.items()}


# ---------------------------------------------------------------------- the image expert


class BoxEncoder(nn.Module):
    """One ``GridEncoder`` run on each of the three boxes (shared weights); the cells of all
    three are the picture's regions, ``(B, 3 * cells, width)``, with no mark of their box."""

    def __init__(self, width: int = 32, blocks: int = 3, image_model: str = "scratch"):
        super().__init__()
        self.grid = vision_language.image_encoder(image_model, width, blocks)  # or a pretrained tower, per box
        self.width = self.grid.width

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, w = len(image), image.shape[-1]
        scale = w / (BOXES * BOX + (BOXES - 1) * GAP)  # the canvas is 400 published pixels wide
        size, step = round(BOX * scale), round((BOX + GAP) * scale)
        boxes = torch.stack([image[:, :, :, i * step: i * step + size] for i in range(BOXES)], 1)
        regions, mask = self.grid(boxes.flatten(0, 1))  # (B * 3, cells, width)
        return regions.reshape(b, -1, self.width), mask.reshape(b, -1)


class PairEncoder(nn.Module):
    """NLVR2: one ``GridEncoder`` run on the left and the right photograph (shared weights, as
    the published NLVR2 models use one image encoder for both); the cells of both are the
    regions, ``(B, 2 * cells, width)``, left first, each with a learned embedding of its side
    added, so a region knows whether it is in the left or the right image."""

    def __init__(self, width: int = 32, blocks: int = 3, image_model: str = "scratch"):
        super().__init__()
        self.grid = vision_language.image_encoder(image_model, width, blocks)  # or a pretrained tower, per photograph
        self.width = self.grid.width
        self.side = nn.Parameter(torch.randn(2, self.width) * 0.1)  # left, right

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if image.ndim != 5 or image.shape[1] != 2:
            raise ValueError(f"PairEncoder expects image pairs (B, 2, 3, H, W), got {tuple(image.shape)}")
        b = len(image)
        regions, mask = self.grid(image.flatten(0, 1))  # (B * 2, cells, width)
        regions = regions.reshape(b, 2, -1, self.width) + self.side[None, :, None, :]
        return regions.reshape(b, -1, self.width), mask.reshape(b, -1)


DATASETS = {"nlvr": BoxEncoder, "nlvr2": PairEncoder}


def build_model(data: NLVRData | None = None, image_width: int = 32, text_width: int = 64, text_layers: int = 2,
                fusion: str = "attention", hidden: int = 64, shared_backbone: bool = False,
                dataset: str | None = None, text: TextSpec | None = None, image_model: str = "scratch") -> I2M2:
    """I2M2 with experts ``image`` (v1: boxes; NLVR2: the image pair), ``text`` and ``joint``,
    each with 2 logits. The sentence tokens and the data set are those of ``data`` (what
    ``load`` returned), or given as ``text`` and ``dataset`` (``"nlvr"`` by default); the text
    encoder is the one the tokens were made for (``load``'s ``text_model``). ``image_model``:
    ``"scratch"`` (a ``GridEncoder`` of ``image_width``) or a ``transformers`` vision checkpoint,
    run on each box (v1) or each photograph (NLVR2)."""
    text = text or (data.text if data is not None else None)
    dataset = dataset or (data.dataset if data is not None else "nlvr")
    if text is None:
        raise ValueError("build_model needs the data (nlvr.load's result), or text=")
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {tuple(DATASETS)}, got {dataset!r}")
    return vision_language.build_model(functools.partial(DATASETS[dataset], image_width, image_model=image_model), text,
                                       len(CLASS_NAMES),
                                       text_width=text_width, text_layers=text_layers, fusion=fusion,
                                       hidden=hidden, shared_backbone=shared_backbone)


def recipe(epochs: int | None = None, regime: str = "joint", lr: float | None = None) -> Recipe:
    """``fit`` arguments (``vision_language.recipe``: 20 epochs by default), selecting on
    validation (dev) accuracy."""
    return vision_language.recipe(20 if epochs is None else epochs, regime, lr, monitor="accuracy")


def selection_metric(data: NLVRData, preferred: str | None = None) -> str:
    """``preferred`` (default: the recipe's monitor, accuracy) when it is defined on the
    validation (dev) split (AUROC needs both labels there), else ``"loss"``."""
    return defined_metric(data.splits["valid"], "categorical", len(CLASS_NAMES),
                          preferred or recipe().monitor)


# ---------------------------------------------------------------------- what the notebook shows


def prepare(data_dir: str, prepared: str | Path, downsample: int = 5, image_size: int = 64) -> Path:
    """The prepared folder, made from ``data_dir`` (looked up from here and the repository
    root) unless it was made from the same files; the script tells NLVR (v1) from NLVR2
    itself (``downsample`` concerns v1, ``image_size`` NLVR2)."""
    prepared, raw = Path(prepared), find_folder(data_dir)
    if raw is None and not (prepared / "metadata.json").exists():
        raise FileNotFoundError(f"data_dir={data_dir!r}: no such folder here or in the repository")
    prepare_data("nlvr", raw, prepared, args=("--no-progress", "--downsample", str(downsample),
                                              "--image-size", str(image_size)))
    return prepared


def load_prepared(prepared: str | Path, text_model: str = "auto", downsample: int = 5, image_size: int = 64,
                  limit: int | None = None) -> NLVRData:
    """``load`` at ``downsample`` (NLVR v1) or ``image_size`` (NLVR2), as the folder holds."""
    if metadata(prepared).get("dataset") == "nlvr2":
        return load(prepared, text_model, image_size=image_size, limit=limit)
    return load(prepared, text_model, downsample=downsample, limit=limit)


def describe(data: NLVRData) -> dict[str, Any]:
    """Print the renderer's agreement with the published pictures (v1), each split's size,
    share of true and majority baseline, and the tokens and images; return the agreement,
    the sizes and the baseline (``"renderer_agreement"``, ``"splits"``, ``"majority_baseline"``)."""
    meta = data.metadata
    checks = (meta.get("renderer") or {}).get("agreement_with_published") or {}  # NLVR2: no renderer
    for c in checks.values():
        print(f"renderer vs the published {c['published']} PNGs ({c['examples']} pictures): "
              f"{c['pixels_equal']:.2%} of pixels equal, {c['pixels_within_8']:.2%} within 8 levels")
    majority = majority_baseline(data)
    for split in SPLITS:
        y = data.splits[split].targets
        print(f"{split:5s} {len(y):5d} examples, {y.float().mean():.1%} true; majority baseline {majority[split]:.3f}")
    skipped = sum((meta.get("skipped_missing_images") or {}).values())
    if skipped:
        print(f"{skipped} examples left out for missing photographs: {meta['skipped_missing_images']}")
    print(f"text: {data.text.model} tokens, vocabulary {data.text.vocab_size}, {data.text.max_len} per sentence; "
          f"images {tuple(data.splits['train'].inputs['image'].shape[1:])}")
    return {"renderer_agreement": checks, "splits": {s: len(d) for s, d in data.splits.items()},
            "majority_baseline": majority}


def show_examples(data: NLVRData, chosen: Sequence[int], title: str, split: str = "test", extra=lambda i: ""):
    """Some examples: each sentence (wrapped) and its truth above the picture (v1), or the left
    and right photographs (NLVR2)."""
    chosen = list(chosen)
    images = data.splits[split].inputs["image"][chosen]
    panels = ({"left": images[:, 0].float() / 255, "right": images[:, 1].float() / 255}  # uint8 pairs (n, 2, 3, S, S)
              if data.dataset == "nlvr2" else {"picture": images})
    captions = ["<br>".join(textwrap.wrap(data.sentences[split][i], 34))
                + f"<br><b>{CLASS_NAMES[int(data.splits[split].targets[i])]}</b>{extra(i)}" for i in chosen]
    return plots.examples(panels, captions, title=title)


def joint_overrules(data: NLVRData, pred: Predictions, shown: int = 5) -> tuple[dict[str, int], list]:
    """The test examples whose prediction would change without the joint expert: printed,
    counted (``count``, ``right``) and the first ``shown`` drawn, each with every expert's call."""
    overruled = contributions.flips(pred.expert_logits)["joint"]
    calls = {n: z.argmax(1) for n, z in pred.expert_logits.items()}
    final = pred.logits.argmax(1)
    counts = {"count": int(overruled.sum()), "right": int((final[overruled] == pred.targets[overruled]).sum())}
    print(f"the joint expert overrules the others on {counts['count']} of {len(final)} test examples; "
          f"right on {counts['right']} of them")
    chosen = overruled.nonzero().flatten()[:shown].tolist()

    def says(i):
        return "<br>" + ", ".join(f"{n} {CLASS_NAMES[int(calls[n][i])]}" for n in calls)

    figures = [show_examples(data, chosen, "The joint expert overrules the image and text experts", extra=says)] if chosen else []
    return counts, figures
