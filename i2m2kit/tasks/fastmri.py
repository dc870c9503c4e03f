"""fastMRI knee: four findings from the magnitude and the phase of the complex MR image.

The prepared folder (``data_scripts/prepare_fastmri.py``: single-coil k-space -> centred
inverse FFT -> 320 x 320 complex image -> magnitude and phase, fastMRI+ labels) and the
experts of the published I2M2 code: three PreAct-ResNet18 with GroupNorm, trained jointly
from scratch,

* ``magnitude`` expert: one input channel, the magnitude image;
* ``phase`` expert: one input channel, the phase image;
* ``joint`` expert: two input channels, magnitude and phase stacked,

each with one log-odds per label (``abnormal, meniscus_tear, acl, cartilage``): a
``multilabel`` head, the summed log-odds of the experts giving each label's probability.
The published code trained a two-class cross-entropy per label with class weights; binary
cross-entropy with a positive-class weight ``n_neg / n_pos`` is the same loss up to a
constant factor per label.

Sensitivity and specificity are reported at the published operating point: per label, the
highest threshold whose sensitivity on the *validation* split exceeds 90% (falling back to
the first threshold with a false-positive rate above 25%), applied to the test split.

    data = fastmri.load("data/fastmri")          # {"train", "valid", "test"}: TensorData
    model = fastmri.build_model()                # experts "magnitude", "phase", "joint"
    ik.fit(model, data["train"], data["valid"], **fastmri.recipe(prepared="data/fastmri").fit_arguments())
    fastmri.operating_point_scores(model, data["valid"], data["test"])
"""

from __future__ import annotations

import csv
import functools
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn import metrics as skm
from torch import nn

from ..data import TensorData
from ..experts import I2M2, Expert
from ..inference import predict
from ..io import read_metadata
from ..protocol import Recipe, defined_metric

MODALITIES = ("magnitude", "phase")
LABELS = ("abnormal", "meniscus_tear", "acl", "cartilage")
SPLITS = ("train", "valid", "test")
MISS_RATE = 0.10  # published operating point: sensitivity above 90% on validation ...
FALLBACK_FALSE_POSITIVE_RATE = 0.25  # ... else the first threshold past this false-positive rate


# ---------------------------------------------------------------------- data


def metadata(path: str | Path) -> dict[str, Any]:
    return read_metadata(path, f"python data_scripts/prepare_fastmri.py --raw DIR --annotations DIR --out {path}")


def pos_weight(path: str | Path) -> torch.Tensor:
    """Per-label positive-class weights of the training split (``n_neg / n_pos``), for the loss."""
    weights = metadata(path)["class_weights"]
    return torch.tensor([weights[name]["pos_weight"] for name in LABELS], dtype=torch.float32)


def _downsample(magnitude: np.ndarray, phase: np.ndarray, factor: int, chunk: int = 256):
    """Average-pool the complex image (not magnitude and phase apart: phase wraps at +-pi)."""
    n, h, w = magnitude.shape
    mag_out = np.empty((n, h // factor, w // factor), dtype=np.float32)
    phase_out = np.empty_like(mag_out)
    for start in range(0, n, chunk):
        z = torch.polar(torch.from_numpy(np.asarray(magnitude[start:start + chunk], dtype=np.float32)),
                        torch.from_numpy(np.asarray(phase[start:start + chunk], dtype=np.float32)))
        pooled = torch.complex(F.avg_pool2d(z.real[:, None], factor), F.avg_pool2d(z.imag[:, None], factor))[:, 0]
        mag_out[start:start + chunk] = pooled.abs().numpy()
        phase_out[start:start + chunk] = pooled.angle().numpy()
    return mag_out, phase_out


def load(path: str | Path, downsample: int = 1, splits: Sequence[str] = SPLITS) -> dict[str, TensorData]:
    """The prepared splits: inputs ``{"magnitude", "phase"}`` of shape (N, 1, 320, 320), targets (N, 4).

    At full size the arrays stay memory-mapped (a batch reads its slices from disk; the full
    benchmark is about 14 GB in float16) and the networks cast them to float32. ``downsample``
    > 1 average-pools the complex image by that factor into memory (quick runs and tests).
    """
    path = Path(path)
    metadata(path)  # a clear error when the folder is not a prepared one
    data = {}
    for split in splits:
        files = {name: path / split / f"{name}.npy" for name in (*MODALITIES, "labels")}
        for file in files.values():
            if not file.is_file():
                raise FileNotFoundError(f"{file}: not found; is {path} a complete prepared fastMRI folder?")
        # copy-on-write maps: torch wants writable arrays, and nothing is ever written back
        arrays = {name: np.load(file, mmap_mode="c") for name, file in files.items()}
        labels = torch.from_numpy(np.asarray(arrays["labels"], dtype=np.float32))
        for name in MODALITIES:
            if arrays[name].shape[0] != len(labels) or arrays[name].ndim != 3:
                raise ValueError(f"{files[name]}: shape {arrays[name].shape}, expected ({len(labels)}, H, W)")
        if downsample > 1:
            magnitude, phase = _downsample(arrays["magnitude"], arrays["phase"], downsample)
        else:
            magnitude, phase = arrays["magnitude"], arrays["phase"]
        inputs = {"magnitude": torch.from_numpy(magnitude)[:, None], "phase": torch.from_numpy(phase)[:, None]}
        data[split] = TensorData(inputs, labels)
    return data


# ---------------------------------------------------------------------- experts


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups (fewer when the network is narrow): batch statistics play no part,
    so batches of a few large slices train as well as large ones."""
    return nn.GroupNorm(math.gcd(32, channels), channels)


class PreActBlock(nn.Module):
    """Pre-activation residual block (He et al., 2016): norm, ReLU, conv, norm, ReLU, conv, + shortcut."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.norm2 = group_norm(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.shortcut = (nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False)
                         if stride != 1 or in_channels != channels else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.norm2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    """PreAct-ResNet with GroupNorm over images ``(B, C, H, W)``, one logit per label.

    ``blocks=(2, 2, 2, 2)`` and ``width=64`` is PreAct-ResNet18 as published: a 3x3 stem at
    full resolution, four stages of widths 64-512 (strides 1, 2, 2, 2), then global average
    pooling and a linear layer. Called with several images (the joint expert), it stacks them
    as channels.
    """

    def __init__(self, in_channels: int, n_labels: int = len(LABELS), width: int = 64,
                 blocks: Sequence[int] = (2, 2, 2, 2), dropout: float = 0.0):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        stages, channels = [], width
        for i, n in enumerate(blocks):
            out = width * 2 ** i
            stages += [PreActBlock(channels if j == 0 else out, out, stride=(2 if i and j == 0 else 1))
                       for j in range(n)]
            channels = out
        self.stages = nn.Sequential(*stages)
        self.norm = group_norm(channels)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(channels, n_labels)

    def forward(self, *images: torch.Tensor) -> torch.Tensor:
        x = torch.cat(images, dim=1).to(self.stem.weight.dtype)  # float16 storage -> the network's dtype
        x = F.relu(self.norm(self.stages(self.stem(x))))
        return self.head(self.dropout(x.mean(dim=(2, 3))))


def build_model(width: int = 64, blocks: Sequence[int] = (2, 2, 2, 2), dropout: float = 0.0) -> I2M2:
    """I2M2 for fastMRI: experts ``magnitude`` and ``phase`` (1 channel) and ``joint`` (2 channels),
    each a PreAct-ResNet18 with GroupNorm by default; ``width`` 64 as published (smaller for quick runs)."""
    def resnet(channels: int) -> PreActResNet:
        return PreActResNet(channels, len(LABELS), width, blocks, dropout)

    return I2M2({
        "magnitude": Expert(resnet(1), reads="magnitude"),
        "phase": Expert(resnet(1), reads="phase"),
        "joint": Expert(resnet(2), reads=MODALITIES),
    }, likelihood="bernoulli")


def recipe(epochs: int | None = None, regime: str = "joint", prepared: str | Path | None = None, lr: float = 1e-4,
           weight_decay: float = 1e-5, batch_size: int = 16, patience: int | None = 5) -> Recipe:
    """The published fastMRI runs: joint training from scratch for ``epochs`` (50 by default),
    AdamW, class-weighted loss (the training split's weights, read from the prepared folder
    ``prepared``), early stopping and model selection on mean validation AUROC. The learning
    rate, weight decay, batch size and patience are this package's choices, not published
    values."""
    return Recipe(regime=regime, epochs=50 if epochs is None else epochs, batch_size=batch_size, monitor="auroc",
                  patience=patience, optimizer=functools.partial(torch.optim.AdamW, lr=lr, weight_decay=weight_decay),
                  loss_weight=pos_weight(prepared) if prepared is not None else None)


def selection_metric(data: dict[str, TensorData], preferred: str | None = None) -> str:
    """``preferred`` (default: the recipe's monitor, mean AUROC) when it is defined on the
    validation split (some label has both classes there), else ``"loss"``."""
    return defined_metric(data["valid"], "bernoulli", len(LABELS), preferred or recipe().monitor)


# ---------------------------------------------------------------------- operating point


def operating_threshold(probs: np.ndarray, y: np.ndarray, miss_rate: float = MISS_RATE) -> float | None:
    """The published operating point of one label on validation data: the highest threshold
    with sensitivity above ``1 - miss_rate``, else the first past a 25% false-positive rate.
    None when the label has one class only."""
    if y.min() == y.max():
        return None
    fpr, tpr, thresholds = skm.roc_curve(y, probs)
    meets = np.flatnonzero(1 - tpr < miss_rate)
    if len(meets) == 0:
        meets = np.flatnonzero(fpr > FALLBACK_FALSE_POSITIVE_RATE)
    return float(min(thresholds[meets[0]], 1.0))  # roc_curve's first threshold is +inf


def scores_at(probs: np.ndarray, y: np.ndarray, threshold: float | None) -> dict[str, float]:
    """AUROC, and at ``threshold`` (positive: probability >= threshold) balanced accuracy,
    sensitivity and specificity of one label; only those defined on ``y``."""
    if y.min() == y.max():
        return {}
    out = {"auroc": skm.roc_auc_score(y, probs)}
    if threshold is not None:
        pred = (probs >= threshold).astype(int)
        out.update(balanced_accuracy=skm.balanced_accuracy_score(y, pred),
                   sensitivity=skm.recall_score(y, pred, pos_label=1, zero_division=0.0),
                   specificity=skm.recall_score(y, pred, pos_label=0, zero_division=0.0),
                   threshold=threshold)
    return {k: float(v) for k, v in out.items()}


def operating_point_scores(model: I2M2, valid: TensorData, test: TensorData,
                           device: str | torch.device = "auto") -> dict[str, float]:
    """Per label (``<metric>/<label>``) and mean over labels: test AUROC, and balanced accuracy,
    sensitivity and specificity at the operating point chosen on ``valid``; from probabilities."""
    p_valid, p_test = (predict(model, d, device=device) for d in (valid, test))
    probs_valid, probs_test = p_valid.probs.numpy(), p_test.probs.numpy()
    y_valid, y_test = p_valid.targets.numpy().astype(int), p_test.targets.numpy().astype(int)
    out: dict[str, float] = {}
    per_metric: dict[str, list[float]] = {}
    for j, name in enumerate(LABELS):
        threshold = operating_threshold(probs_valid[:, j], y_valid[:, j])
        for metric, value in scores_at(probs_test[:, j], y_test[:, j], threshold).items():
            out[f"{metric}/{name}"] = value
            if metric != "threshold":
                per_metric.setdefault(metric, []).append(value)
    out.update({metric: float(np.mean(values)) for metric, values in per_metric.items()})
    return out


def label_logits(expert_logits: Mapping[str, torch.Tensor], label: str) -> dict[str, torch.Tensor]:
    """One label's log-odds per expert as two-class logits ``[0, z]``: ``softmax([0, z]) =
    [1 - sigmoid(z), sigmoid(z)]``, so the multiclass contribution analysis applies exactly."""
    j = LABELS.index(label)
    return {name: torch.stack([torch.zeros_like(z[:, j]), z[:, j]], dim=1) for name, z in expert_logits.items()}


def operating_point_table(trained: Sequence[Mapping[str, I2M2]], valid: TensorData, test: TensorData,
                          device: str | torch.device = "auto") -> list[dict[str, Any]]:
    """One row per model: ``operating_point_scores`` of each seed's trained model (as
    ``compare_across_seeds`` returns them), mean over the seeds and ``<metric>_std``."""
    runs = [{name: operating_point_scores(model, valid, test, device) for name, model in models.items()}
            for models in trained]
    rows = []
    for name in trained[0]:
        row: dict[str, Any] = {"model": name}
        for metric in runs[0][name]:
            values = [run[name][metric] for run in runs if metric in run[name]]
            row[metric], row[f"{metric}_std"] = float(np.mean(values)), float(np.std(values))
        rows.append(row)
    return rows


# ---------------------------------------------------------------------- what the notebook shows


def prepare(prepared: str | Path, data_dir: str | Path, annotations_dir: str | Path | None = None,
            split_seed: int = 0) -> Path:
    """``prepared`` built from the k-space files in ``data_dir`` and the fastMRI+ annotations
    (``annotations_dir``, else ``fastmri_plus`` beside the data or in ``../shared/data``),
    split with ``split_seed``, unless it holds this build already. Without the raw files a
    prepared folder is used as it is (its settings still checked)."""
    from ..runner import find_folder, prepare_data

    raw = find_folder(data_dir)
    if raw is None and not (Path(prepared) / "metadata.json").exists():
        raise FileNotFoundError(
            f"data_dir={str(data_dir)!r}: no such folder. The fastMRI knee k-space files need a data-use agreement: "
            f"request them at https://fastmri.med.nyu.edu/ and point data_dir at the unpacked single-coil files")
    args: tuple[str, ...] = ()
    if raw is not None:  # the raw files are here: the prepared folder is checked against them
        candidates = [annotations_dir] if annotations_dir else [
            raw.parent.parent / "fastmri_plus", raw.parent / "fastmri_plus", "../shared/data/fastmri_plus"]
        notes = next((f for f in (find_folder(c) for c in candidates) if f and (f / "knee.csv").exists()), None)
        if notes is None:
            raise FileNotFoundError(f"no fastMRI+ annotations (knee.csv, knee_file_list.csv) in {candidates}: get them "
                                    f"from github.com/microsoft/fastmri-plus (Annotations/) and pass annotations_dir")
        args = ("--no-progress", "--annotations", str(notes.resolve()), "--seed", str(split_seed))
    return prepare_data("fastmri", raw, prepared, args=args)


def describe(prepared: str | Path, data: dict[str, TensorData]) -> dict[str, dict[str, int]]:
    """Print each split's volumes, slices and positive slices, the class weights and the image
    size; return the volumes and slices of each split."""
    meta = metadata(prepared)
    for split, c in meta["counts"].items():
        print(f"{split:5s} {c['volumes']:4d} volumes {c['slices']:6d} slices; positive slices {c['positive_slices']}")
    print("positive-class weights of the training split:",
          {k: round(v["pos_weight"], 2) for k, v in meta["class_weights"].items()})
    print(f"images {tuple(data['train'].inputs['magnitude'].shape[-2:])}; "
          f"{len(meta['volumes_not_reviewed_excluded'])} volume(s) never reviewed by fastMRI+ left out")
    return {s: {"volumes": c["volumes"], "slices": c["slices"]} for s, c in meta["counts"].items()}


def show_slices(prepared: str | Path, train: TensorData):
    """The first training slice of each finding the split has, and one with no finding:
    magnitude above, phase below, captioned with the file, the slice and the findings."""
    from .. import plots

    table, y = slices(prepared, "train"), train.targets
    shown = [int(torch.nonzero(y[:, j])[0]) for j in range(len(LABELS)) if y[:, j].any()]
    shown += [int(torch.nonzero(y.sum(1) == 0)[0])] if (y.sum(1) == 0).any() else []
    captions = [f"{table[i]['file']} #{table[i]['slice']}<br>"
                + (", ".join(n for n, v in zip(LABELS, y[i]) if v) or "no finding") for i in shown]
    return plots.examples({m: train.inputs[m][shown, 0].float() for m in MODALITIES}, captions,
                          title="Training slices: magnitude and phase")


def print_scores(scores: Sequence[Mapping[str, Any]], monitor: str, seeds: int) -> None:
    """``operating_point_table``'s rows: each model's mean test AUROC and scores at the operating point."""
    print(f"model selection on validation {monitor}; test, mean over {seeds} seed(s), over the labels defined:")
    for r in scores:
        print(f"  {r['model']:14s} " + "  ".join(f"{m} {r[m]:.3f}" for m in
                                                 ("auroc", "balanced_accuracy", "sensitivity", "specificity") if m in r))


def joint_expert_gain(scores: Sequence[Mapping[str, Any]], experts: Sequence[Mapping[str, Any]],
                      label: str) -> float | None:
    """I2M2's mean test AUROC over the intra-modality model's (what the joint expert adds),
    printed with how often the joint expert decides and flips ``label``'s call; None when
    AUROC is undefined on the test split."""
    by_model = {r["model"]: r for r in scores}
    joint = next(r for r in experts if r["expert"] == "joint")
    if "auroc" not in by_model["i2m2"] or "auroc" not in by_model["intra"]:
        print("test AUROC is undefined here (a label with one class only in the test split)")
        return None
    gain = by_model["i2m2"]["auroc"] - by_model["intra"]["auroc"]
    print(f"I2M2 {by_model['i2m2']['auroc']:.3f} vs intra-modality model {by_model['intra']['auroc']:.3f} mean test "
          f"AUROC: the joint expert adds {gain:+.3f}; in I2M2 it decides {joint['decides']:.0%} of the {label} calls "
          f"and dropping it flips {joint['flip_rate_if_dropped']:.0%}")
    return gain


def slices(path: str | Path, split: str) -> list[dict[str, str]]:
    """The rows of ``slices.csv`` for one split, in array order: file, slice, scale, labels."""
    with open(Path(path) / "slices.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == split]
    return sorted(rows, key=lambda r: int(r["index"]))
