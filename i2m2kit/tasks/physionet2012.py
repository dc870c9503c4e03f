"""PhysioNet/CinC Challenge 2012: in-hospital death from the static record and the first 48 hours.

The prepared folder (``data_scripts/prepare_physionet2012.py``) holds one ``set-X.npz`` per
challenge set: per ICU stay the static record (age, gender, height, admission weight, ICU
type) and 37 variables binned hourly over 48 hours, with observation masks and the hours
since each variable's last measurement; the outcomes, in-hospital death the label.

Experts (two modalities, ``static`` and ``series``):

* ``static`` expert: an MLP over the 8 static values (z-scored, a missing one at the training
  mean) and their 8 observation masks (16 -> 32 -> 2).
* ``series`` expert: a GRU over the 48 hours whose input at each hour is every variable's
  value (z-scored, the last measurement carried forward, the training mean before the
  first), its observation mask and its gap (log of 1 + hours since the last measurement):
  Che et al.'s GRU-Simple (2018). Why a recurrence: after hourly binning the steps are
  regular and few (48), so a GRU is cheap on a CPU; with the masks and gaps as inputs it sees
  when and how often each variable was measured, which itself predicts death (the sicker are
  measured more). Set and attention encoders earn their cost on the raw irregular times,
  which the binning has already made regular. Its last state and the mean of its states go
  to a head (2H -> 64 -> 2).
* ``joint`` expert: its own two encoders, their features concatenated, one head: the
  inter-modality expert (how the series reads depends on who the patient is).

Splits: a seeded split of the training set (default set A), stratified on the label, into
train (70%), valid (15%) and test (15%); with ``test_set="b"`` (or ``"c"``) the test split is
that whole set and the training set is split into train (85%) and valid (15%): the
challenge's own protocol. Normalisation statistics come from the train split only.

    data = physionet2012.load("data/physionet2012", split_seed=0)   # {"train", "valid", "test"}
    model = physionet2012.build_model()
    ik.fit(model, data["train"], data["valid"], **physionet2012.recipe().fit_arguments())
    physionet2012.clinical_metrics(model, data["valid"], data["test"])  # AUROC, AUPRC, event-1, ...
"""

from __future__ import annotations

import functools
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch import nn

from ..blocks import LateFusion, mlp
from ..data import TensorData, split_sizes
from ..experts import I2M2, Expert
from ..inference import predict
from ..io import read_metadata
from ..metrics import event1_threshold, threshold_metrics
from ..protocol import Recipe, defined_metric

MODALITIES = ("static", "series")
HOURS, VARIABLES, STATIC = 48, 37, 8
OUTCOMES = ("SAPS-I", "SOFA", "Length_of_stay", "Survival", "In-hospital_death")  # the file's columns
LABEL, REFERENCE = "In-hospital_death", "SAPS-I"
CLASS_NAMES = ("survived", "died")
CLINICAL_METRICS = ("auroc", "auprc", "event1", "balanced_accuracy")  # what notebook 02 reports
FORMAT_VERSION = 1
BUILD = "python data_scripts/prepare_physionet2012.py --raw ../shared/data/physionet2012 --out {path}"
ARRAYS = {"record_id": (), "static": (STATIC,), "static_mask": (STATIC,), "series": (HOURS, VARIABLES),
          "series_mask": (HOURS, VARIABLES), "series_delta": (HOURS, VARIABLES), "outcomes": (5,)}


# ---------------------------------------------------------------------- data


def metadata(path: str | Path) -> dict[str, Any]:
    """The prepared folder's ``metadata.json``, refused when another format version wrote it."""
    meta = read_metadata(path, BUILD.format(path=path))
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{Path(path) / 'metadata.json'}: format version {meta.get('format_version')}, this package "
                         f"reads {FORMAT_VERSION}; rebuild it with '{BUILD.format(path=path)} --overwrite'")
    return meta


def read_set(path: str | Path, set_name: str = "a") -> dict[str, np.ndarray]:
    """The arrays of one challenge set, checked for shape."""
    file = Path(path) / f"set-{set_name}.npz"
    sets = sorted(metadata(path)["sets"])  # checks the format version too
    if not file.is_file():
        raise FileNotFoundError(f"{file}: not found; the prepared folder holds the sets {sets}")
    try:  # empty (EOFError), truncated (BadZipFile, zlib.error) or not an archive: one line naming the file
        with np.load(file) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (EOFError, OSError, ValueError, zipfile.BadZipFile, zlib.error) as e:
        raise ValueError(f"{file}: not a readable .npz archive ({e or type(e).__name__}; truncated?); rebuild it "
                         f"with '{BUILD.format(path=path)} --overwrite'") from None
    n = len(arrays.get("record_id", ()))
    for name, shape in ARRAYS.items():
        if name not in arrays:
            raise ValueError(f"{file}: no array {name!r}; arrays are {sorted(arrays)}")
        if arrays[name].shape != (n, *shape):
            raise ValueError(f"{file}: {name} has shape {arrays[name].shape}, expected {(n, *shape)}")
    return arrays


def outcome(arrays: dict[str, np.ndarray], column: str) -> np.ndarray:
    """One column of OUTCOMES for every record (-1: not known)."""
    return arrays["outcomes"][:, OUTCOMES.index(column)]


def split_indices(y: np.ndarray, seed: int, test: bool = True, stays: int | None = None) -> dict[str, np.ndarray]:
    """Stratified seeded split of one set's rows: train/valid/test 70/15/15 (``test``) or
    train/valid 85/15; ``stays``: a stratified subsample of that many rows first (quick runs)."""
    rows = np.arange(len(y))
    if stays is not None and stays < len(y):
        rows, _ = train_test_split(rows, train_size=stays, stratify=y, random_state=seed)
    parts = {}
    if test:
        rows, parts["test"] = train_test_split(rows, test_size=0.15, stratify=y[rows], random_state=seed)
    parts["train"], parts["valid"] = train_test_split(rows, test_size=0.15 / (0.85 if test else 1.0),
                                                      stratify=y[rows], random_state=seed)
    return {name: np.sort(parts[name]) for name in ("train", "valid", "test") if name in parts}


def training_statistics(arrays: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    """Mean and standard deviation of every static value and series variable over the
    measured entries of the train rows only."""
    def moments(values: np.ndarray, axes) -> tuple[np.ndarray, np.ndarray]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a variable never measured in a tiny split: mean 0, std 1
            mean, std = np.nanmean(values, axes), np.nanstd(values, axes)
        return np.nan_to_num(mean), np.where(np.nan_to_num(std) > 1e-6, np.nan_to_num(std), 1.0)

    static_mean, static_std = moments(arrays["static"][rows].astype(np.float64), 0)
    series_mean, series_std = moments(arrays["series"][rows].astype(np.float64), (0, 1))
    return {"static_mean": static_mean, "static_std": static_std, "series_mean": series_mean, "series_std": series_std}


def carried_forward(values: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """(N, T, V) values with each unobserved hour taking the last observed one, 0 before the first."""
    hours = np.arange(values.shape[1])[None, :, None]
    last = np.maximum.accumulate(np.where(observed, hours, -1), axis=1)
    filled = np.take_along_axis(np.nan_to_num(values), np.maximum(last, 0), axis=1)
    return np.where(last >= 0, filled, 0.0)


def model_inputs(arrays: dict[str, np.ndarray], rows: np.ndarray, stats: dict[str, np.ndarray],
                 dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """``{"static": (n, 16), "series": (n, 48, 111)}`` of the given rows (see the module docstring)."""
    static = (arrays["static"][rows] - stats["static_mean"]) / stats["static_std"]
    static = np.concatenate([np.nan_to_num(static), arrays["static_mask"][rows]], axis=1)
    observed = arrays["series_mask"][rows].astype(bool)
    values = carried_forward((arrays["series"][rows] - stats["series_mean"]) / stats["series_std"], observed)
    gaps = np.log1p(arrays["series_delta"][rows]) / np.log1p(HOURS)
    series = np.concatenate([values, observed, gaps], axis=2)
    return {"static": torch.as_tensor(static, dtype=dtype), "series": torch.as_tensor(series, dtype=dtype)}


def split_sets(path: str | Path, split_seed: int = 0, train_set: str = "a", test_set: str | None = None,
               stays: int | None = None) -> dict[str, tuple[dict[str, np.ndarray], np.ndarray]]:
    """``{"train", "valid", "test"}``: each split's set arrays and its rows in them (see ``load``)."""
    # numpy's seeds: scikit-learn would name its own random_state, not this parameter
    if isinstance(split_seed, bool) or not isinstance(split_seed, (int, np.integer)) or not 0 <= split_seed < 2 ** 32:
        raise ValueError(f"split_seed must be an integer in [0, 2**32 - 1], got {split_seed!r}")
    if test_set == train_set:
        raise ValueError(f"test_set {test_set!r} is the training set; name another set or None")
    arrays = read_set(path, train_set)
    splits = split_indices(outcome(arrays, LABEL), split_seed, test=test_set is None, stays=stays)
    parts = {name: (arrays, rows) for name, rows in splits.items()}
    if test_set is not None:
        other = read_set(path, test_set)
        parts["test"] = (other, np.arange(len(other["record_id"])))
    return parts


def load(path: str | Path, split_seed: int = 0, train_set: str = "a", test_set: str | None = None,
         stays: int | None = None, dtype: torch.dtype = torch.float32) -> dict[str, TensorData]:
    """The splits ``{"train", "valid", "test"}``; targets in-hospital death (0/1).

    ``test_set``: another challenge set as the test split (default: 15% of ``train_set``).
    ``stays``: a stratified subsample of the training set (the test set stays whole).
    """
    parts = split_sets(path, split_seed, train_set, test_set, stays)
    stats = training_statistics(*parts["train"])
    return {name: TensorData(model_inputs(a, rows, stats, dtype), torch.from_numpy(outcome(a, LABEL)[rows].astype(np.int64)))
            for name, (a, rows) in parts.items()}


def reference_scores(path: str | Path, split_seed: int = 0, train_set: str = "a", test_set: str | None = None,
                     stays: int | None = None, column: str = REFERENCE) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(score, label) of the valid and test splits of ``load`` for a clinical score of the
    outcomes file (SAPS-I, SOFA), records without it (-1) left out."""
    out = {}
    for name, (a, rows) in split_sets(path, split_seed, train_set, test_set, stays).items():
        score, label = outcome(a, column)[rows], outcome(a, LABEL)[rows]
        given = score >= 0
        out[name] = (score[given].astype(np.float64), label[given])
    return {name: out[name] for name in ("valid", "test")}


def clinical_metrics_of_scores(valid: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]) -> dict[str, float]:
    """AUROC, AUPRC, and at the threshold that maximises the event-1 score on ``valid``: the
    event-1 score, balanced accuracy, sensitivity and PPV on ``test``."""
    return {**threshold_metrics(test[0], test[1], event1_threshold(*valid)), "n": len(test[1])}


def clinical_metrics(model: I2M2, valid: TensorData, test: TensorData, device: str = "auto") -> dict[str, float]:
    """``clinical_metrics_of_scores`` of the model's probability of death."""
    def scores(data):
        p = predict(model, data, device=device)
        return p.probs[:, 1].numpy(), p.targets.numpy()
    return clinical_metrics_of_scores(scores(valid), scores(test))


def clinical_over_seeds(models: list[I2M2], valid: TensorData, test: TensorData,
                        device: str = "auto") -> dict[str, Any]:
    """``clinical_metrics`` of one model trained with several seeds: each metric's mean,
    ``<metric>_std`` and ``<metric>_runs``."""
    runs = [clinical_metrics(m, valid, test, device=device) for m in models]
    out: dict[str, Any] = {}
    for metric in runs[0]:
        values = [r[metric] for r in runs]
        out.update({metric: float(np.mean(values)), f"{metric}_std": float(np.std(values)), f"{metric}_runs": values})
    return out


def prepare(prepared: str | Path, data_dir: str | Path) -> Path:
    """``prepared`` built from the challenge's files in ``data_dir`` (looked up from here and
    the repository root) unless it holds this build already."""
    from ..runner import find_folder, prepare_data

    raw = find_folder(data_dir)
    if raw is None and not (Path(prepared) / "metadata.json").exists():
        raise FileNotFoundError(f"data_dir={str(data_dir)!r}: no such folder here or in the repository")
    return prepare_data("physionet2012", raw, prepared, args=("--no-progress",))


def describe(prepared: str | Path, data: dict[str, TensorData]) -> dict[str, int]:
    """Print each challenge set's stays, deaths and implausible values dropped, and each
    split's size and outcomes; return the split sizes."""
    for name, s in metadata(prepared)["sets"].items():
        dropped = sum(c["implausible"] for c in s["measurements"].values())
        print(f"set {name}: {s['records']} ICU stays, {s['in_hospital_deaths']} in-hospital deaths; "
              f"{dropped} implausible values dropped")
    return split_sizes(data, CLASS_NAMES, "stays")


def clinical_table(trained: Sequence[Mapping[str, I2M2]], prepared: str | Path, data: dict[str, TensorData],
                   device: str = "auto", **split: Any) -> dict[str, dict[str, float]]:
    """SAPS-I alone, then each model (``compare_across_seeds``'s trained models): the
    CLINICAL_METRICS of ``clinical_metrics``, means over the seeds. ``split``: the arguments
    ``data`` was loaded with (``test_set``, ``stays``...), so that SAPS-I is scored on the same stays."""
    reference = reference_scores(prepared, **split)
    table = {"SAPS-I alone": clinical_metrics_of_scores(reference["valid"], reference["test"])}
    for name in trained[0]:
        table[name] = clinical_over_seeds([models[name] for models in trained], data["valid"], data["test"], device)
    return {name: {m: values[m] for m in CLINICAL_METRICS} for name, values in table.items()}


# ---------------------------------------------------------------------- experts


class SeriesEncoder(nn.Module):
    """GRU-Simple over (hours, values + masks + gaps); its last state and its mean state."""

    def __init__(self, inputs: int = 3 * VARIABLES, hidden: int = 64):
        super().__init__()
        self.gru = nn.GRU(inputs, hidden, batch_first=True)

    def forward(self, series: torch.Tensor) -> torch.Tensor:
        states, last = self.gru(series)
        return torch.cat([last[-1], states.mean(1)], dim=1)


def build_model(hidden: int = 64, static_hidden: int = 32, head_hidden: int = 64, dropout: float = 0.2) -> I2M2:
    """I2M2 with experts ``static``, ``series`` and ``joint``, each with its own encoders."""
    def static_encoder():
        return nn.Sequential(nn.Linear(2 * STATIC, static_hidden), nn.ReLU())

    def head(d_in):
        return nn.Sequential(nn.Dropout(dropout), mlp(d_in, head_hidden, 2))

    series_out = 2 * hidden
    return I2M2({
        "static": Expert(nn.Sequential(static_encoder(), head(static_hidden)), reads="static"),
        "series": Expert(nn.Sequential(SeriesEncoder(hidden=hidden), head(series_out)), reads="series"),
        "joint": Expert(LateFusion({"static": static_encoder(), "series": SeriesEncoder(hidden=hidden)},
                                   head=head(static_hidden + series_out)), reads=MODALITIES),
    })


def recipe(epochs: int | None = None, regime: str = "joint") -> Recipe:
    """``epochs`` (20 by default) with Adam lr 1e-3 and weight decay 1e-4, batch 64, gradients
    clipped at 1, selection on validation AUPRC (the rare class's ranking), stopping after 5
    epochs without gain."""
    return Recipe(regime=regime, epochs=20 if epochs is None else epochs, batch_size=64, monitor="auprc", patience=5,
                  clip_grad_norm=1.0, optimizer=functools.partial(torch.optim.Adam, lr=1e-3, weight_decay=1e-4))


def selection_metric(data: dict[str, TensorData], preferred: str | None = None) -> str:
    """``preferred`` (default: the recipe's monitor, AUPRC) when it is defined on the
    validation split (both outcomes there), else ``"loss"``."""
    return defined_metric(data["valid"], "categorical", 2, preferred or recipe().monitor)
