"""MIMIC-III: mortality and ICD-9 groups from the static record and the first day's time series.

The prepared file (``data_scripts/prepare_mimic.py``: MultiBench's ``im.pk`` content as
``mimic.npz``) and the experts of the published I2M2 code, which are MultiBench's:

* ``static`` expert: an MLP encoder of the 5 admission features (5 -> 10 -> 10) and a head
  (10 -> 40 -> K);
* ``series`` expert: a GRU (12 -> 30) over the 24 hourly steps, every step's state
  flattened (24 x 30 = 720), and a head (720 -> 40 -> K);
* ``joint`` expert: its own two encoders, their outputs concatenated (730) and a head
  (730 -> 40 -> K): MultiBench's late-fusion model.

Tasks, as MultiBench poses them:

* ``"mortality"``: 6 classes, the first window in which the patient died: 0 survived a year
  after discharge, 1 within 24 h of ICU admission, 2 within 48 h, 3 within 72 h, 4 within 30
  days of discharge, 5 within a year of it (the in-hospital label is not used);
* ``"icd9_140_239"`` (neoplasms) and ``"icd9_460_519"`` (respiratory diseases): binary, a
  diagnosis in the group (columns 1 and 7 of ``y_icd9``).

The static comorbidity flags come from the admission's ICD-9 codes (SAPS-II's definition, as in
MultiBench): metastatic cancer and hematologic malignancy codes lie inside group 140-239, so
on that task the static expert sees part of the label.

Split, as MultiBench's loader: the N admissions, in file order, shuffled by Python's
``random`` with seed 10; validation the first tenth, test the second tenth, training the
rest. **Normalisation differs on purpose:** MultiBench z-scores every feature with the mean
and standard deviation of all N admissions, test ones included, which leaks test statistics
into training; here the statistics come from the training split only (per static feature;
per series variable over all steps) and are applied to every split.

    data = mimic.load("data/mimic", task="mortality")   # {"train", "valid", "test"}: TensorData
    model = mimic.build_model(mimic.n_classes("mortality"))
    recipe = mimic.recipe().replace(monitor=mimic.selection_metric(data, task="mortality"))
    ik.fit(model, data["train"], data["valid"], **recipe.fit_arguments())
"""

from __future__ import annotations

import functools
import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..blocks import LateFusion, mlp
from ..data import TensorData, split_sizes
from ..experts import I2M2, Expert
from ..io import read_metadata
from ..protocol import Recipe, defined_metric

MODALITIES = ("static", "series")
STATIC_FEATURES = 5
SERIES_VARIABLES = 12
SPLIT_SEED = 10  # MultiBench's
TASKS = {"mortality": None, "icd9_140_239": 1, "icd9_460_519": 7}  # task -> column of y_icd9
MORTALITY_CLASSES = ("survived 1 y", "died < 24 h", "died 24-48 h", "died 48-72 h",
                     "died < 30 d after discharge", "died < 1 y after discharge")


# ---------------------------------------------------------------------- data


def read_prepared(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a prepared folder (or of its ``mimic.npz``), checked for shape."""
    path = Path(path)
    file = path / "mimic.npz" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{file}: not found; build it with "
                                f"'python data_scripts/prepare_mimic.py --raw DIR --out {path}'")
    with np.load(file) as npz:
        arrays = {k: npz[k] for k in npz.files}
    n = len(arrays.get("adm_labels_all", ()))
    expected = {"adm_features_all": (n, STATIC_FEATURES), "ep_tdata": (n, None, SERIES_VARIABLES),
                "adm_labels_all": (n, 6), "y_icd9": (n, 20)}
    for name, shape in expected.items():
        if name not in arrays:
            raise ValueError(f"{file}: no array {name!r}; arrays are {sorted(arrays)}")
        got = arrays[name].shape
        if len(got) != len(shape) or any(s is not None and s != g for s, g in zip(shape, got)):
            raise ValueError(f"{file}: {name} has shape {got}, expected {shape} (None: any)")
    return arrays


def n_classes(task: str) -> int:
    _check_task(task)
    return len(MORTALITY_CLASSES) if task == "mortality" else 2


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"task must be one of {list(TASKS)}, got {task!r}")


def targets(arrays: dict[str, np.ndarray], task: str) -> np.ndarray:
    """Class of each admission for ``task`` (see the module docstring)."""
    _check_task(task)
    if task != "mortality":
        return arrays["y_icd9"][:, TASKS[task]].astype(np.int64)
    died = arrays["adm_labels_all"][:, 1:] > 0  # 24 h, 48 h, 72 h, 30 d, 1 y
    return np.where(died.any(1), died.argmax(1) + 1, 0).astype(np.int64)


def split_indices(n: int, seed: int = SPLIT_SEED) -> dict[str, np.ndarray]:
    """MultiBench's split: shuffle with Python's ``random`` (seed 10); valid first tenth, test second."""
    order = list(range(n))
    random.Random(seed).shuffle(order)  # the same permutation as random.seed(10); random.shuffle
    return {"valid": np.array(order[: n // 10], dtype=np.int64),
            "test": np.array(order[n // 10: n // 5], dtype=np.int64),
            "train": np.array(order[n // 5:], dtype=np.int64)}


def training_statistics(static: np.ndarray, series: np.ndarray) -> dict[str, np.ndarray]:
    """Mean and standard deviation of the training split: per static feature, per series variable."""
    def safe(std: np.ndarray) -> np.ndarray:
        return np.where(std > 1e-8, std, 1.0)  # a constant feature (no AIDS in a small split) stays 0

    return {"static_mean": static.mean(0), "static_std": safe(static.std(0)),
            "series_mean": series.mean((0, 1)), "series_std": safe(series.std((0, 1)))}


def load(path: str | Path, task: str = "mortality", seed: int = SPLIT_SEED,
         dtype: torch.dtype = torch.float32) -> dict[str, TensorData]:
    """The splits ``{"train", "valid", "test"}``.

    Inputs ``{"static": (N, 5), "series": (N, 24, 12)}`` z-scored with training statistics;
    targets the classes of ``task``.
    """
    arrays = read_prepared(path)
    static = np.nan_to_num(arrays["adm_features_all"].astype(np.float64))
    series = np.nan_to_num(arrays["ep_tdata"].astype(np.float64))
    y = torch.from_numpy(targets(arrays, task))
    splits = split_indices(len(y), seed)
    if min(len(i) for i in splits.values()) == 0:
        raise ValueError(f"{path}: {len(y)} admissions are too few to split into train, valid and test")
    stats = training_statistics(static[splits["train"]], series[splits["train"]])
    static = (static - stats["static_mean"]) / stats["static_std"]
    series = (series - stats["series_mean"]) / stats["series_std"]
    return {name: TensorData({"static": torch.as_tensor(static[i], dtype=dtype),
                              "series": torch.as_tensor(series[i], dtype=dtype)}, y[i])
            for name, i in splits.items()}


def class_names(task: str) -> list[str]:
    return list(MORTALITY_CLASSES) if task == "mortality" else ["no", "yes"]


def prepare(prepared: str | Path, data_dir: str | Path) -> Path:
    """``prepared`` built from the database's CSV tables in ``data_dir`` (looked up from here
    and the repository root) unless it holds this build already."""
    from ..runner import find_folder, prepare_data

    raw = find_folder(data_dir)
    if raw is None and not (Path(prepared) / "metadata.json").exists():
        raise FileNotFoundError(f"data_dir={str(data_dir)!r}: no such folder here or in the repository")
    if raw is not None and not list(raw.glob("PATIENTS.csv*")) + list(raw.glob("patients.csv*")):
        raise FileNotFoundError(f"data_dir={str(data_dir)!r} holds no MIMIC-III tables (PATIENTS.csv.gz, ...); "
                                "pass -p data_dir with the folder of the database's CSV tables")
    return prepare_data("mimic", raw, prepared, args=("--no-progress",))


def describe(prepared: str | Path, data: dict[str, TensorData], task: str) -> dict[str, int]:
    """Print the cohort, the in-hospital mortality and each split's size and classes; return
    the split sizes."""
    meta = read_metadata(prepared, f"python data_scripts/prepare_mimic.py --raw DIR --out {prepared}")
    print(f"{meta['cohort']['measurements_spanning_more_than_24h']} admissions (one ICU stay each); "
          f"in-hospital mortality {meta['prevalence']['mortality/in_hospital']:.3f}")
    return split_sizes(data, class_names(task), "stays")


# ---------------------------------------------------------------------- experts


class SeriesEncoder(nn.Module):
    """A GRU over the hourly steps; the states of all steps, flattened (MultiBench's GRU + Concat)."""

    def __init__(self, variables: int = SERIES_VARIABLES, hidden: int = 30):
        super().__init__()
        self.gru = nn.GRU(variables, hidden, batch_first=True)

    def forward(self, series: torch.Tensor) -> torch.Tensor:
        states, _ = self.gru(series)
        return states.flatten(1)


def build_model(n_classes: int = len(MORTALITY_CLASSES), steps: int = 24, static_hidden: int = 10, series_hidden: int = 30,
                head_hidden: int = 40) -> I2M2:
    """I2M2 with experts ``static``, ``series`` and ``joint``, each with its own encoders
    (``n_classes``: 6 for the mortality task, the default; 2 for an ICD-9 group)."""
    static_out, series_out = static_hidden, steps * series_hidden

    def static_encoder():
        return mlp(STATIC_FEATURES, static_hidden, static_hidden)

    return I2M2({
        "static": Expert(nn.Sequential(static_encoder(), mlp(static_out, head_hidden, n_classes)), reads="static"),
        "series": Expert(nn.Sequential(SeriesEncoder(hidden=series_hidden),
                                       mlp(series_out, head_hidden, n_classes)), reads="series"),
        "joint": Expert(LateFusion({"static": static_encoder(), "series": SeriesEncoder(hidden=series_hidden)},
                                   head=mlp(static_out + series_out, head_hidden, n_classes)), reads=MODALITIES),
    })


def recipe(epochs: int | None = None, regime: str = "joint") -> Recipe:
    """The published MIMIC-III runs: joint training from scratch for ``epochs`` (20 by
    default), RMSprop lr 1e-3, batch 40, model selection on validation AUPRC."""
    return Recipe(regime=regime, epochs=20 if epochs is None else epochs, batch_size=40, monitor="auprc",
                  optimizer=functools.partial(torch.optim.RMSprop, lr=1e-3))


def selection_metric(data: dict[str, TensorData], preferred: str | None = None, task: str = "mortality") -> str:
    """``preferred`` (default: the recipe's monitor, AUPRC) when it is defined on the
    validation split of ``task``'s classes (every class present), else ``"loss"``.

    AUPRC is undefined when a class is absent from the validation split, as it is on the
    100-patient demo (9 validation admissions).
    """
    return defined_metric(data["valid"], "categorical", n_classes(task), preferred or recipe().monitor)
