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
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..blocks import Concat, LateFusion, mlp
from ..data import TensorData
from ..experts import I2M2, Expert
from ..io import class_labels, read_array
from ..protocol import Recipe, defined_metric

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


IMAGE_LAYERS, AUDIO_LAYERS = 3, 5  # extra convolutions to reach 1x1 from 28x28 and from 112x112


def image_encoder(channels: int) -> LeNet:
    return LeNet(channels, IMAGE_LAYERS)


def audio_encoder(channels: int) -> LeNet:
    return LeNet(channels, AUDIO_LAYERS)


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

    encoders = {"image": image_encoder(joint_channels), "audio": audio_encoder(joint_channels)}
    dims = [e.out_features for e in encoders.values()]
    fuse = Concat(dims) if fusion == "concat" else LowRankTensorFusion(dims, fused_features, rank)
    return I2M2({  # built in this order (the joint encoders first), so that a seed gives the published initialisation
        "image": Expert(uni(image_encoder(channels)), reads="image"),
        "audio": Expert(uni(audio_encoder(channels)), reads="audio"),
        "joint": Expert(LateFusion(encoders, fuse, mlp(fuse.out_features, hidden, n_classes)), reads=MODALITIES),
    })


def published_sgd(lr: float):
    """The published optimiser at learning rate ``lr``: SGD with weight decay 1e-4."""
    return functools.partial(torch.optim.SGD, lr=lr, weight_decay=1e-4)


def recipe(epochs: int | None = None, regime: str = "pretrain_finetune") -> Recipe:
    """The published AV-MNIST runs: each expert pretrained alone, then the experts fine-tuned
    together (``regime="joint"``: from scratch instead), ``epochs`` (30 by default) for each
    stage; SGD with weight decay 1e-4, batch 40, gradient norm clipped at 8, model selection on
    validation accuracy. The learning rate is each run's published one (``per_model``): 0.01
    for the uni-modal experts and I2M2, 0.1 for the inter-modality (fusion) model and the
    intra-modality fine-tuning."""
    epochs = 30 if epochs is None else epochs
    return Recipe(regime=regime, epochs=epochs, pretrain_epochs=epochs, batch_size=40, clip_grad_norm=8.0,
                  optimizer=published_sgd(0.01), monitor="accuracy",
                  per_model={"inter": {"optimizer": published_sgd(0.1)}, "intra": {"optimizer": published_sgd(0.1)}})


def selection_metric(data: dict[str, TensorData], preferred: str | None = None) -> str:
    """``preferred`` (default: the recipe's monitor, accuracy) when it is defined on the
    validation split, else ``"loss"``."""
    return defined_metric(data["valid"], "categorical", N_CLASSES, preferred or recipe().monitor)


# ---------------------------------------------------------------------- what the notebook shows


def prepare(prepared: str | Path, raw_dir: str | Path, n_train: int, n_test: int, download: bool = False,
            given: bool = False) -> Path:
    """``prepared`` built from the raw files in ``raw_dir`` (looked up from here and the
    repository root; fetched from their publishers with ``download``) unless it holds this
    build already; a ``given`` folder that holds prepared AV-MNIST (a release) is used as it is."""
    from ..runner import find_folder, prepare_data

    prepared = Path(prepared)
    if given and is_prepared(prepared):
        return prepared
    raw = find_folder(raw_dir)
    if raw is None and not download:
        raise FileNotFoundError(f"raw_dir={str(raw_dir)!r}: no such folder here or in the repository "
                                f"(or set download = True)")
    args = ["--n-train", str(n_train), "--n-test", str(n_test), "--no-progress"] + (["--download"] if download else [])
    return prepare_data("avmnist", raw or raw_dir, prepared, args=tuple(args), reads=RAW_READS)


def describe(prepared: str | Path, data: dict[str, TensorData]) -> dict[str, int]:
    """Print how the pairs were degraded (from ``metadata.json``, when there is one) and each
    split's size and digits; return the split sizes."""
    meta_file = Path(prepared) / "metadata.json"
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    if meta:
        print(f"image: {meta['image']['components']} principal components "
              f"({meta['image']['variance_kept']:.0%} of the variance kept)")
        print(f"audio: speech-to-noise ratio {meta['audio']['snr_db']} dB; test speakers {meta['speakers']['test']}, "
              f"noise {meta['noise']['source']}")
    for name in ("train", "valid", "test"):
        counts = torch.bincount(data[name].targets, minlength=N_CLASSES).tolist()
        print(f"{name:5s} {len(data[name]):6d} pairs; per digit {counts}")
    return {name: len(data[name]) for name in ("train", "valid", "test")}


def pictures(i: int | Sequence[int], data: TensorData) -> dict[str, torch.Tensor]:
    """The image and the spectrogram of pair(s) ``i``, as ``plots.examples`` and
    ``plots.sample_view`` draw them (the spectrogram flipped: low frequencies at the bottom)."""
    return {"image": data.inputs["image"][i], "spectrogram": data.inputs["audio"][i]}


def show_pairs(data: TensorData, chosen: Sequence[int], captions: Sequence[str], title: str):
    """``plots.examples`` of the ``chosen`` pairs: image above, spectrogram below."""
    from .. import plots

    return plots.examples(pictures(list(chosen), data), captions, flip_vertical=["spectrogram"], title=title)


def first_of_each_digit(data: TensorData, digits: int = 5) -> list[int]:
    return [int((data.targets == d).nonzero()[0]) for d in range(digits)]


def print_accuracies(rows: Sequence[dict], regime: str, epochs: int) -> None:
    """Each model's test accuracy, mean and std over seeds, beside the published I2M2's."""
    print(f"test accuracy over {len(rows[0]['seeds'])} seed(s) ({regime}, {epochs} epoch(s) per stage); "
          f"published I2M2: 72.38%")
    for r in rows:
        print(f"  {r['model']:10s} {100 * r['accuracy']:6.2f}% ± {100 * r['accuracy_std']:.2f}")


def joint_overrules(pred, data: TensorData, shown: tuple[int, int] = (4, 2)):
    """Where the joint expert moves I2M2 away from what the image and audio experts together
    say: prints how often, rightly and wrongly; returns those counts and a figure of the first
    ``shown`` pairs of each (None when there is none)."""
    from .. import contributions

    intra_says = (pred.expert_logits["image"] + pred.expert_logits["audio"]).argmax(1)
    i2m2_says = pred.logits.argmax(1)
    overruled = contributions.flips(pred.expert_logits)["joint"]
    rightly = overruled & (i2m2_says == pred.targets)
    wrongly = overruled & (intra_says == pred.targets)
    counts = {"fraction": overruled.float().mean().item(), "rightly": int(rightly.sum()), "wrongly": int(wrongly.sum())}
    print(f"the joint expert changes the call on {overruled.float().mean():.1%} of test pairs: "
          f"{counts['rightly']} times to the true digit, {counts['wrongly']} times away from it")
    picked = rightly.nonzero().flatten()[:shown[0]].tolist() + wrongly.nonzero().flatten()[:shown[1]].tolist()
    figure = show_pairs(data, picked, [f"true {int(data.targets[i])}<br>image+audio say {int(intra_says[i])}<br>"
                                       f"I2M2 says {int(i2m2_says[i])}" for i in picked],
                        "The joint expert overrules the uni-modal experts") if picked else None
    return counts, figure
