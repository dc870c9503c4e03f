"""AV-MNIST: a digit from a degraded image and a noisy spoken recording.

The prepared data (``data_scripts/prepare_avmnist.py``, or MultiBench's ``avmnist.tar.gz``,
the same layout) and the experts of the published I2M2 code:

* image and audio experts: MultiBench's LeNet (a 5x5 convolution, then 3x3 convolutions that
  double the channels, each followed by batch norm, ReLU and 2x2 max-pooling, down to a 1x1
  map) and an MLP head. Three extra convolutions take a 28x28 image to 1x1, five a 112x112
  spectrogram.
* joint expert: its own two encoders, twice as wide, fused by concatenation (or low-rank
  tensor fusion) and an MLP head.

    data = avmnist.load("data/avmnist")          # {"train", "valid", "test"}: TensorData
    model = avmnist.build_model()                # experts "image", "audio", "joint"
"""

from __future__ import annotations

import csv
import functools
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..experts import I2M2, Expert
from ..io import class_labels, read_array
from ..data import TensorData

MODALITIES = ("image", "audio")
# what prepare_avmnist.py reads of its --raw folder (which may hold other data sets too)
RAW_READS = ("mnist/**/*", "fsdd/**/*", "esc50/**/*")
N_CLASSES = 10
VALID_SIZE = 5000  # the last training pairs, by convention of the release


# ---------------------------------------------------------------------- data


def _as_tensor(array: np.ndarray, shape: tuple[int, ...], path: Path, dtype: torch.dtype,
               chunk: int = 4096) -> torch.Tensor:
    """0-255 values as a float tensor in [0, 1] with one channel, ``(N, 1, *shape)``.

    Converted a chunk at a time from the memory-mapped file, so that the only full-size copy
    is the result (the release stores float64: 6 GB of audio for the training split).
    """
    if array.shape[1:] not in (shape, (int(np.prod(shape)),)):
        raise ValueError(f"{path}: arrays of shape {array.shape[1:]} per example, expected {shape}")
    if array.dtype.kind not in "iuf":
        raise ValueError(f"{path}: {array.dtype} values, expected numbers in 0-255")
    out = torch.empty((len(array), 1, *shape), dtype=dtype)
    for start in range(0, len(array), chunk):
        block = torch.from_numpy(np.array(array[start:start + chunk]))
        if block.is_floating_point() and not torch.isfinite(block).all():
            bad = start + int((~torch.isfinite(block.reshape(len(block), -1))).any(1).nonzero()[0])
            raise ValueError(f"{path}: example {bad} holds NaN or infinite values")
        if len(block) and (block.min() < 0 or block.max() > 255):  # not this layout's scale: would train on it
            bad = start + int(((block < 0) | (block > 255)).reshape(len(block), -1).any(1).nonzero()[0])
            raise ValueError(f"{path}: example {bad} holds values outside 0-255")
        out[start:start + len(block)] = block.reshape(len(block), 1, *shape).to(dtype) / 255
    return out


def prepared_files(path: str | Path) -> list[Path]:
    """The six arrays of the layout (this package's build or MultiBench's release)."""
    path = Path(path)
    return ([path / m / f"{split}_data.npy" for split in ("train", "test") for m in MODALITIES]
            + [path / f"{split}_labels.npy" for split in ("train", "test")])


def is_prepared(path: str | Path) -> bool:
    """Does ``path`` hold prepared AV-MNIST (every array of the layout)?"""
    return all(f.is_file() for f in prepared_files(path))


def load(path: str | Path, valid_size: int = VALID_SIZE, limit: int | None = None,
         dtype: torch.dtype = torch.float32,
         splits: tuple[str, ...] = ("train", "valid", "test")) -> dict[str, TensorData]:
    """The prepared splits, in memory: ``{"train", "valid", "test"}``.

    Inputs ``{"image": (N, 1, 28, 28), "audio": (N, 1, 112, 112)}`` scaled to [0, 1]; targets
    the digits. ``valid`` is the last ``valid_size`` training pairs, ``train`` the rest.
    ``limit`` keeps the first ``limit`` examples of each split (quick runs; only those are read);
    ``splits`` the splits to read (e.g. ``("test",)`` to score trained models).
    """
    path = Path(path)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1 (or None for all), got {limit}")
    files = {(split, m): path / m / f"{split}_data.npy" for split in ("train", "test") for m in MODALITIES}
    files.update({(split, "labels"): path / f"{split}_labels.npy" for split in ("train", "test")})
    for file in files.values():
        if not file.is_file():
            raise FileNotFoundError(f"{file}: not found; build AV-MNIST with "
                                    f"'python data_scripts/prepare_avmnist.py --raw DIR --out {path}'")
    arrays = {key: read_array(file, mmap_mode="r") for key, file in files.items()}  # nothing read yet
    for split in ("train", "test"):
        arrays[split, "labels"] = class_labels(arrays[split, "labels"], N_CLASSES, files[split, "labels"])
        if not len(arrays[split, "labels"]):
            raise ValueError(f"{files[split, 'labels']}: no examples")
    for (split, m), array in arrays.items():
        if len(array) != len(arrays[split, "labels"]):
            raise ValueError(f"{files[split, m]}: {len(array)} examples, but "
                             f"{len(arrays[split, 'labels'])} labels in {files[split, 'labels'].name}")
    n = len(arrays["train", "labels"])
    if not 0 < valid_size < n:
        raise ValueError(f"valid_size={valid_size} must leave training data: there are {n} training pairs")
    parts = {"train": ("train", 0, n - valid_size), "valid": ("train", n - valid_size, n),
             "test": ("test", 0, len(arrays["test", "labels"]))}
    data = {}
    for name, (split, start, stop) in parts.items():
        if name not in splits:  # memory-mapped: a split not asked for is never read
            continue
        rows = slice(start, stop if limit is None else min(stop, start + limit))
        inputs = {m: _as_tensor(arrays[split, m][rows], shape, files[split, m], dtype)
                  for m, shape in (("image", (28, 28)), ("audio", (112, 112)))}
        data[name] = TensorData(inputs, torch.from_numpy(np.array(arrays[split, "labels"][rows], dtype=np.int64)))
    return data


def inter_share(path: str | Path) -> float:
    """The share of pairs whose label lives only in the relation of image and recording
    (``prepare_avmnist.py --inter-share``); 0 for the published benchmark and its release."""
    file = Path(path) / "metadata.json"
    return float(json.loads(file.read_text()).get("inter_share", 0.0)) if file.is_file() else 0.0


def inter_pairs(path: str | Path, valid_size: int = VALID_SIZE, limit: int | None = None) -> dict[str, torch.Tensor]:
    """Which pairs of each split of ``load(path, valid_size, limit)`` are inter-modality ones
    (the image shows a random digit a, the recording (label - a) mod 10), as boolean masks,
    from the ``inter`` column of ``<split>_pairs.csv``; all False where there is none (share 0)."""
    path = Path(path)
    flags = {}
    for split in ("train", "test"):
        file = path / f"{split}_pairs.csv"
        rows = []
        if file.is_file():
            with open(file, newline="") as f:
                rows = list(csv.DictReader(f))
        if not rows or "inter" not in rows[0]:  # the published pairing (or MultiBench's release, without the file)
            flags[split] = np.zeros(len(read_array(path / f"{split}_labels.npy", mmap_mode="r")), bool)
            continue
        try:
            flags[split] = np.array([int(r["inter"]) for r in rows]) == 1
        except (TypeError, ValueError):
            raise ValueError(f"{file}: the column inter must hold 0 or 1 in every row") from None
    n = len(flags["train"])
    parts = {"train": flags["train"][:n - valid_size], "valid": flags["train"][n - valid_size:], "test": flags["test"]}
    return {k: torch.from_numpy(v[:limit].copy()) for k, v in parts.items()}


# ---------------------------------------------------------------------- experts


class LeNet(nn.Module):
    """MultiBench's LeNet encoder: ``(B, 1, H, W) -> (B, channels * 2**extra_layers)``.

    A 5x5 convolution to ``channels``, then ``extra_layers`` 3x3 convolutions each doubling
    the channels; every one followed by batch norm, ReLU and 2x2 max-pooling. Enough layers
    to pool the input down to 1x1 (3 for 28x28 images, 5 for 112x112 spectrograms).
    """

    def __init__(self, channels: int, extra_layers: int, in_channels: int = 1):
        super().__init__()
        widths = [channels * 2 ** i for i in range(extra_layers + 1)]
        blocks = []
        for i, width in enumerate(widths):
            conv = (nn.Conv2d(in_channels, width, 5, padding=2, bias=False) if i == 0
                    else nn.Conv2d(widths[i - 1], width, 3, padding=1, bias=False))
            nn.init.kaiming_uniform_(conv.weight)
            blocks += [conv, nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2)]
        self.layers = nn.Sequential(*blocks, nn.Flatten())
        self.out_features = widths[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    """MultiBench's two-layer MLP head."""
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, d_out))


IMAGE_LAYERS, AUDIO_LAYERS = 3, 5  # extra convolutions to reach 1x1 from 28x28 and from 112x112


def image_encoder(channels: int) -> LeNet:
    return LeNet(channels, IMAGE_LAYERS)


def audio_encoder(channels: int) -> LeNet:
    return LeNet(channels, AUDIO_LAYERS)


class Concat(nn.Module):
    """Fusion by concatenation of the encoders' features."""

    def __init__(self, dims: Sequence[int]):
        super().__init__()
        self.out_features = sum(dims)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat(list(features), dim=-1)


class LowRankTensorFusion(nn.Module):
    """Low-rank multimodal fusion (Liu et al., 2018).

    The tensor product of the features, each with a 1 appended (so that the uni-modal terms
    stay in the product), projected to ``out_features`` through a rank-``rank`` factorised
    weight: ``sum_r w_r * prod_m ([1, h_m] @ W_m[r]) + b``. Every factor is a registered
    parameter (the published module kept them in a Python list, so they were never trained
    on a GPU nor saved).
    """

    def __init__(self, dims: Sequence[int], out_features: int, rank: int):
        super().__init__()
        self.factors = nn.ParameterList(
            nn.Parameter(nn.init.xavier_normal_(torch.empty(rank, d + 1, out_features))) for d in dims)
        self.rank_weights = nn.Parameter(nn.init.xavier_normal_(torch.empty(1, rank)))
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.out_features = out_features

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        fused = None
        for h, factor in zip(features, self.factors):
            with_one = torch.cat([h.new_ones(len(h), 1), h], dim=-1)
            projected = torch.einsum("bd,rdo->rbo", with_one, factor)
            fused = projected if fused is None else fused * projected
        return torch.einsum("r,rbo->bo", self.rank_weights[0], fused) + self.bias


class JointNet(nn.Module):
    """The joint expert's network: one encoder per modality, a fusion, an MLP head."""

    def __init__(self, encoders: Sequence[nn.Module], fusion: nn.Module, head: nn.Module):
        super().__init__()
        self.encoders = nn.ModuleList(encoders)
        self.fusion = fusion
        self.head = head

    def forward(self, *modalities: torch.Tensor) -> torch.Tensor:
        return self.head(self.fusion([enc(x) for enc, x in zip(self.encoders, modalities)]))


FUSIONS = ("concat", "lowrank")


def build_model(channels: int = 3, joint_channels: int = 6, hidden: int = 100, fusion: str = "concat",
                rank: int = 40, fused_features: int = 120, n_classes: int = N_CLASSES) -> I2M2:
    """I2M2 for AV-MNIST: experts "image", "audio" (LeNet + MLP) and "joint" (reads both).

    ``channels``: width of the uni-modal LeNets (3 in the published code); ``joint_channels``:
    width of the joint expert's encoders (6: twice as wide, as the published late-fusion and
    low-rank models); ``fusion``: "concat" (late fusion) or "lowrank" (low-rank tensor fusion
    to ``fused_features``, rank ``rank``: the published 120 and 40).
    """
    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")

    def uni(encoder: LeNet) -> nn.Sequential:
        return nn.Sequential(encoder, mlp(encoder.out_features, hidden, n_classes))

    encoders = [image_encoder(joint_channels), audio_encoder(joint_channels)]
    dims = [e.out_features for e in encoders]
    fuse = Concat(dims) if fusion == "concat" else LowRankTensorFusion(dims, fused_features, rank)
    return I2M2({
        "image": Expert(uni(image_encoder(channels)), reads="image"),
        "audio": Expert(uni(audio_encoder(channels)), reads="audio"),
        "joint": Expert(JointNet(encoders, fuse, mlp(fuse.out_features, hidden, n_classes)), reads=MODALITIES),
    })


def published_sgd(lr: float):
    """The published optimiser at learning rate ``lr``: SGD with weight decay 1e-4."""
    return functools.partial(torch.optim.SGD, lr=lr, weight_decay=1e-4)


def published_recipe(epochs: int = 30, regime: str = "pretrain_finetune") -> dict[str, Any]:
    """``compare_models`` arguments of the published AV-MNIST runs: each expert pretrained
    alone, then the experts fine-tuned together (``regime="joint"``: from scratch instead),
    ``epochs`` for each stage; SGD with weight decay 1e-4, batch 40, gradient norm clipped at
    8, model selection on validation accuracy. The learning rate is each run's published one:
    0.01 for the uni-modal experts and I2M2, 0.1 for the inter-modality (fusion) model and the
    intra-modality fine-tuning."""
    return dict(regime=regime, epochs=epochs, pretrain_epochs=epochs, batch_size=40, clip_grad_norm=8.0,
                optimizer=published_sgd(0.01), monitor="accuracy",
                per_model={"inter": {"optimizer": published_sgd(0.1)}, "intra": {"optimizer": published_sgd(0.1)}})
