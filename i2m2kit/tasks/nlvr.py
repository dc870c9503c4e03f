"""NLVR (v1): is a sentence true of a picture of three boxes of shapes?

The prepared folder (``data_scripts/prepare_nlvr.py``: sentences, labels, and images rendered
from the published structured worlds), and the experts (``vision_language``: a BERT-style
text encoder, cross-attention or concatenation fusion, own encoders or one frozen shared
backbone) with NLVR's image encoder:

* ``image`` expert: a small CNN applied to each of the three boxes with shared weights, its
  cells becoming regions (coordinates are two extra input channels, so a region knows where
  in its box it lies). No region knows which box it is in: the label holds for every box
  order (the dataset publishes six orders per example), so the expert is built not to care.

Each expert ends in a 2-class head (``false``, ``true``).

    data = nlvr.load("data/nlvr")                        # splits train / valid (dev) / test
    model = nlvr.build_model(data.text)
    ik.fit(model, data.splits["train"], data.splits["valid"], **nlvr.recipe())
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..experts import I2M2
from ..io import read_metadata
from ..train import TensorData
from . import vision_language
from .vision_language import (CLS, FUSIONS, MODALITIES, PAD, TEXT_MODELS, UNK, GridEncoder, TextSpec,  # noqa: F401
                              pretrained_text_dir, resolve_text_model, tokenize)

SPLITS = ("train", "valid", "test")
CLASS_NAMES = ("false", "true")
BOXES, BOX, GAP = 3, 100, 50  # the published canvas: three 100-pixel boxes, 50-pixel bars


# ---------------------------------------------------------------------- data


@dataclass
class NLVRData:
    splits: dict[str, TensorData]  # inputs {"image": (N, 3, H, W) float in [0, 1], "text": (N, L) int64}
    sentences: dict[str, list[str]]
    identifiers: dict[str, list[str]]
    text: TextSpec
    metadata: dict[str, Any]


def metadata(path: str | Path) -> dict[str, Any]:
    return read_metadata(path, f"python data_scripts/prepare_nlvr.py --raw DIR --out {path}")


def read_split(path: str | Path, split: str) -> tuple[list[dict], np.ndarray]:
    """The examples (identifier, sentence, label) and uint8 images (N, H, W, 3) of a split."""
    path = Path(path)
    examples = [json.loads(line) for line in (path / f"{split}.jsonl").read_text(encoding="utf-8").splitlines() if line]
    images = np.load(path / f"{split}_images.npy", mmap_mode="r")
    if len(images) != len(examples) or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{path}: {split}_images.npy has shape {images.shape}, expected ({len(examples)}, H, W, 3)")
    return examples, images


def image_tensor(images: np.ndarray, factor: int) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H / factor, W / factor) in [0, 1], block-averaged."""
    x = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).float().div_(255)  # a copy: the file is read-only
    return F.avg_pool2d(x, factor) if factor > 1 else x


def load(path: str | Path, text_model: str = "auto", downsample: int | None = None,
         limit: dict[str, int] | int | None = None, max_len: int | None = None) -> NLVRData:
    """The prepared splits as tensors.

    ``downsample``: the images' size relative to the published 100 x 400 (default: as
    prepared); it must be a multiple of the prepared factor that keeps the box edges on whole
    pixels (it divides 50). ``limit``: keep only the first examples of each split (an int for
    the training split, or a dict per split), for quick runs.
    """
    meta = metadata(path)
    prepared = meta["image"]["downsample"]
    downsample = downsample or prepared
    if downsample % prepared or GAP % downsample:
        raise ValueError(f"downsample={downsample}: must be a multiple of the prepared factor {prepared} "
                         f"that divides {GAP} (box edges on whole pixels)")
    limits = {"train": limit} if isinstance(limit, int) else dict(limit or {})
    examples, images = {}, {}
    for split in SPLITS:
        examples[split], images[split] = read_split(path, split)
        n = limits.get(split)
        if n is not None:
            examples[split], images[split] = examples[split][:n], images[split][:n]
    sentences = {s: [x["sentence"] for x in e] for s, e in examples.items()}
    ids, spec = tokenize(sentences, text_model, max_len)
    splits = {s: TensorData({"image": image_tensor(images[s], downsample // prepared), "text": ids[s]},
                            torch.tensor([x["label"] for x in examples[s]], dtype=torch.int64))
              for s in SPLITS}
    return NLVRData(splits, sentences, {s: [x["identifier"] for x in e] for s, e in examples.items()}, spec, meta)


def majority_baseline(data: NLVRData) -> dict[str, float]:
    """Accuracy of always answering the training split's majority label, per split."""
    majority = int(data.splits["train"].targets.float().mean() >= 0.5)
    return {s: float((d.targets == majority).float().mean()) for s, d in data.splits.items()}


# ---------------------------------------------------------------------- the image expert


class BoxEncoder(nn.Module):
    """One ``GridEncoder`` run on each of the three boxes (shared weights); the cells of all
    three are the picture's regions, ``(B, 3 * cells, width)``, with no mark of their box."""

    def __init__(self, width: int = 32, blocks: int = 3):
        super().__init__()
        self.grid = GridEncoder(width, blocks)
        self.width = width

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, w = len(image), image.shape[-1]
        scale = w / (BOXES * BOX + (BOXES - 1) * GAP)  # the canvas is 400 published pixels wide
        size, step = round(BOX * scale), round((BOX + GAP) * scale)
        boxes = torch.stack([image[:, :, :, i * step: i * step + size] for i in range(BOXES)], 1)
        regions, mask = self.grid(boxes.flatten(0, 1))  # (B * 3, cells, width)
        return regions.reshape(b, -1, self.width), mask.reshape(b, -1)


def build_model(text: TextSpec, image_width: int = 32, text_width: int = 64, text_layers: int = 2,
                fusion: str = "attention", hidden: int = 64, shared_backbone: bool = False) -> I2M2:
    """I2M2 with experts ``image`` (boxes), ``text`` and ``joint``, each with 2 logits."""
    return vision_language.build_model(functools.partial(BoxEncoder, image_width), text, len(CLASS_NAMES),
                                       text_width=text_width, text_layers=text_layers, fusion=fusion,
                                       hidden=hidden, shared_backbone=shared_backbone)


def recipe(epochs: int = 20, regime: str = "joint", lr: float | None = None) -> dict[str, Any]:
    """``fit`` arguments (``vision_language.recipe``), selecting on validation (dev) accuracy."""
    return vision_language.recipe(epochs, regime, lr, monitor="accuracy")
