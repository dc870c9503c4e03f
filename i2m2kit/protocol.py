"""The experiment protocol of the paper: every model it compares, trained the same way and
scored on the same test set, over seeds; and the same models with a modality missing or noised.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .data import TensorData
from .experts import I2M2
from .inference import evaluate
from .likelihoods import as_likelihood
from .train import LOWER_IS_BETTER, FitResult, fit


# pretraining each expert alone only differs from joint training where there are several
PRETRAINED_MODELS = ("intra", "i2m2")


@dataclass(frozen=True)
class Recipe:
    """How a benchmark trains its models: ``fit``'s arguments (its defaults here), and the
    arguments that replace them for some models (``per_model``: the published AV-MNIST runs
    train each model at its own learning rate). ``fit(model, train, valid, **recipe.fit_arguments())``
    trains one model by it; ``compare_models(..., recipe=recipe)`` every model."""

    epochs: int = 10
    regime: str = "joint"
    pretrain_epochs: int | None = None
    optimizer: Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer] | None = None
    batch_size: int = 64
    clip_grad_norm: float | None = None
    loss_weight: torch.Tensor | None = None
    monitor: str = "loss"
    patience: int | None = None
    restore_best: bool = True
    amp: bool = True
    per_model: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def fit_arguments(self, model: str | None = None) -> dict[str, Any]:
        """The ``fit`` arguments (of the named model, with its overrides)."""
        shared = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "per_model"}
        return {**shared, **self.per_model.get(model, {})} if model is not None else shared

    def replace(self, **changes: Any) -> "Recipe":
        return dataclasses.replace(self, **changes)


def defined_metric(valid: TensorData, likelihood: str, n_outputs: int, preferred: str) -> str:
    """``preferred`` when ``likelihood``'s metrics define it on ``valid`` (scored with uniform
    probabilities: AUROC, say, needs both classes there), else ``"loss"``: what each task's
    ``selection_metric`` monitors, so that a small validation split never selects on NaN."""
    if not len(valid):
        return "loss"
    probs = np.full((len(valid), n_outputs), 1 / n_outputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = as_likelihood(likelihood).metrics(probs, valid.targets.numpy()).get(preferred)
    return preferred if value is not None and np.isfinite(value) else "loss"


def compare_models(
    build_model: Callable[[], I2M2],
    train: Dataset | DataLoader,
    valid: Dataset | DataLoader | None,
    test: Dataset | DataLoader,
    *,
    names: Iterable[str] | None = None,
    seed: int = 0,
    checkpoint_dir: str | os.PathLike | None = None,
    progress: bool = True,
    trained: dict[str, I2M2] | None = None,
    fit_results: dict[str, FitResult] | None = None,
    per_model: dict[str, dict[str, Any]] | None = None,
    weigh: bool = False,
    recipe: Recipe | None = None,
    **fit_kwargs: Any,
) -> list[dict[str, Any]]:
    """Train every model the paper compares and score each on ``test``.

    Each of uni-modal, intra-modality, inter-modality and I2M2 (``model.baselines()``) is
    cut from a freshly built model with the same seed, so they start from the same weights,
    and trained on its own with the same ``fit`` arguments. With ``regime="pretrain_finetune"``
    the single-expert models (uni-modal, inter) are trained first, for ``pretrain_epochs``,
    and are the pretraining of the others, which start from their weights and are fine-tuned
    (``train_seconds`` then includes that pretraining). Returns one row per model; if a
    ``trained`` dict is given, the trained models are put in it by name, and if a
    ``fit_results`` dict is given, each model's ``FitResult``. ``per_model`` maps a
    model's name to ``fit`` arguments that replace the shared ones for it (a published recipe
    may train each model at its own learning rate). ``weigh``: one more row, ``"i2m2
    (weighted)"``: the experts as trained alone (in the uni-modal and inter models, so no
    more training) in a product whose exponents are fitted on ``valid`` (``weights.py``),
    and ``"i2m2 (selected)"``: whichever of it and the published I2M2 scores better on
    ``valid`` by the ``monitor`` (the row says which). ``recipe``: the ``fit`` arguments and
    ``per_model`` overrides in one object; arguments given besides it replace its own.
    """
    if recipe is not None:
        fit_kwargs = {**recipe.fit_arguments(), **fit_kwargs}
        per_model = {**recipe.per_model, **(per_model or {})}
    views = build_model().baselines()  # which models there are, and how many experts each has
    names = list(names) if names is not None else list(views)
    for argument, given in (("names", names), ("per_model", per_model or {})):
        unknown = set(given) - set(views)
        if unknown:
            raise ValueError(f"{argument} names {sorted(unknown)}, not among the models {list(views)}")
    device = fit_kwargs.get("device", "auto")
    staged = fit_kwargs.get("regime") == "pretrain_finetune"
    order = names
    if staged:  # single-expert models first: they are the pretraining of the others
        order = sorted(names, key=lambda name: len(views[name].experts) > 1)
    pretrained: dict[str, tuple[I2M2, float]] = {}  # expert name -> (its trained model, seconds)
    rows, models = {}, {}
    for name in tqdm(order, desc="models", disable=not progress):
        torch.manual_seed(seed)
        model = build_model().baselines()[name]
        directory = None if checkpoint_dir is None else Path(checkpoint_dir) / name.replace(":", "-")
        kwargs, seconds = {**fit_kwargs, **(per_model or {}).get(name, {})}, 0.0
        done = [n for n in model.experts if n in pretrained] if staged and len(model.experts) > 1 else []
        for n in done:  # as published: start from the experts' own trained runs, then fine-tune together
            model.experts[n].load_state_dict(pretrained[n][0].experts[n].state_dict())
            seconds += pretrained[n][1]
        started = time.perf_counter()
        # one bar over the models; a bar per epoch of each would bury it
        result = fit(model, train, valid, seed=seed, checkpoint_dir=directory, progress=False, pretrained=done, **kwargs)
        seconds += time.perf_counter() - started
        if staged and len(model.experts) == 1:  # an expert trained alone: the pretraining of the others
            pretrained[next(iter(model.experts))] = (model, seconds)
        models[name] = model
        if fit_results is not None:  # each run's history (and its wall time per epoch)
            fit_results[name] = result
        rows[name] = {"model": name, **evaluate(model, test, device=device, name="test"),
                      "best_epoch": result.best_epoch, "train_seconds": seconds}
    if trained is not None:
        trained.update(models)
    if weigh:
        from .weights import weighted_from_experts

        # each expert from the smallest trained model holding it: the experts trained alone
        holders = {e: min((n for n in models if e in models[n].experts), key=lambda n: len(models[n].experts))
                   for e in views["i2m2"].experts if any(e in m.experts for m in models.values())}
        if set(holders) != set(views["i2m2"].experts) or any(len(models[n].experts) == len(views["i2m2"].experts)
                                                           for n in holders.values()):
            raise ValueError("weigh=True weighs the experts as trained alone: names must include the "
                             f"uni-modal and inter models (got {names})")
        torch.manual_seed(seed)
        model, weights = weighted_from_experts(build_model, {e: models[n] for e, n in holders.items()}, valid,
                                               device=device)
        if trained is not None:
            trained["i2m2 (weighted)"] = model
        rows["i2m2 (weighted)"] = {"model": "i2m2 (weighted)", **evaluate(model, test, device=device, name="test"),
                                   "best_epoch": None, "weights": weights,
                                   "train_seconds": sum(rows[n]["train_seconds"] for n in set(holders.values()))}
        names = [*names, "i2m2 (weighted)"]
        if "i2m2" in models:  # the better of the two products on validation: where fine-tuning them together
            monitor = fit_kwargs.get("monitor", "loss")  # pays (AV-MNIST) the published one, else the weighted
            scores = {n: evaluate(models.get(n, model), valid, device=device, name="valid")[monitor]
                      for n in ("i2m2", "i2m2 (weighted)")}
            chosen = (min if monitor in LOWER_IS_BETTER else max)(scores, key=scores.get)
            if trained is not None:
                trained["i2m2 (selected)"] = trained[chosen]
            rows["i2m2 (selected)"] = {**rows[chosen], "model": "i2m2 (selected)", "selected": chosen,
                                       "train_seconds": rows["i2m2"]["train_seconds"]
                                       + rows["i2m2 (weighted)"]["train_seconds"]}
            names = [*names, "i2m2 (selected)"]
    return [rows[name] for name in names]


def compare_across_seeds(
    build_model: Callable[[], I2M2],
    train: Dataset | DataLoader,
    valid: Dataset | DataLoader | None,
    test: Dataset | DataLoader,
    seeds: Iterable[int],
    after_seed: Callable[[int, list[dict[str, Any]]], None] | None = None,
    **kwargs: Any,
) -> tuple[list[dict[str, Any]], list[dict[str, I2M2]]]:
    """``compare_models`` once per seed. Returns one row per model with every metric's mean
    over the seeds where it is defined (and ``<metric>_std``, ``<metric>_runs``), and the
    trained models of each seed. ``after_seed(seed, rows)`` is called as each seed's runs
    end (a long benchmark writes its results there, not only at the end)."""
    seeds = list(seeds)
    runs, trained_per_seed = [], []
    for seed in seeds:
        trained: dict[str, I2M2] = {}
        runs.append(compare_models(build_model, train, valid, test, seed=seed, trained=trained, **kwargs))
        trained_per_seed.append(trained)
        if after_seed is not None:
            after_seed(seed, runs[-1])
    summary = []
    for i, name in enumerate(r["model"] for r in runs[0]):
        row: dict[str, Any] = {"model": name, "seeds": seeds}
        for metric in runs[0][i]:
            values = [rows[i][metric] for rows in runs if isinstance(rows[i].get(metric), (int, float))]
            if metric != "model" and values:
                row[metric] = float(np.mean(values))
                row[f"{metric}_std"] = float(np.std(values))
                row[f"{metric}_runs"] = values
        summary.append(row)
    return summary, trained_per_seed


def evaluate_missing(model: I2M2, data: TensorData, **kwargs: Any) -> list[dict[str, Any]]:
    """The model's test metrics with every subset of its modalities present (the experts that
    read an absent modality drop out); one row per subset that leaves an expert to run."""
    rows = []
    for r in range(len(model.modalities), 0, -1):
        for kept in itertools.combinations(model.modalities, r):
            if not any(set(e.reads) <= set(kept) for e in model.experts.values()):
                continue
            subset = TensorData({m: data.inputs[m] for m in kept}, data.targets)
            rows.append({"modalities": " + ".join(kept), **evaluate(model, subset, **kwargs)})
    return rows


def evaluate_noised(model: I2M2, data: TensorData, modality: str, levels: Iterable[float],
                    seed: int = 0, **kwargs: Any) -> list[dict[str, Any]]:
    """The model's test metrics with Gaussian noise added to one modality at test time.

    The noise's standard deviation is ``level`` times the modality's own (over ``data``), so
    levels mean the same for every modality; one row per level, the same noise draw for every
    model evaluated with the same seed.
    """
    if modality not in data.inputs:
        raise KeyError(f"modality {modality!r} is not in the data; it has {sorted(data.inputs)}")
    x = data.inputs[modality]
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype).to(x.device)
    noise *= x.float().std().to(x.dtype)  # in units of the modality's own spread, computed once
    rows = []
    for level in levels:
        noised = TensorData({**data.inputs, modality: x + level * noise}, data.targets)
        rows.append({"noised": modality, "noise": float(level), **evaluate(model, noised, **kwargs)})
    return rows


def missing_modality_rows(trained: Iterable[Mapping[str, I2M2]], rows: Iterable[Mapping[str, Any]], test: TensorData,
                          metric: str, model: str = "i2m2", **kwargs: Any) -> list[dict[str, Any]]:
    """``model`` (of each seed's ``trained`` models) with each subset of its modalities present,
    ``metric`` averaged over the seeds where it is defined; then the uni-modal models as
    trained alone (their ``rows`` of ``compare_across_seeds``): what a modality missing at test
    time costs against a model never trained on it. ``kwargs`` go to ``evaluate``."""
    per_seed = [evaluate_missing(models[model], test, **kwargs) for models in trained]
    out = []
    for i, r in enumerate(per_seed[0]):
        values = [m[i][metric] for m in per_seed if metric in m[i]]
        if values:
            out.append({"model": f"{model}, {r['modalities']}", metric: sum(values) / len(values)})
    return out + [{"model": f"{r['model']} (trained alone)", metric: r[metric]}
                  for r in rows if r["model"].startswith("uni:") and metric in r]


def noised_rows(models: Mapping[str, I2M2], test: TensorData, modalities: Iterable[str], levels: Iterable[float],
                metric: str, **kwargs: Any) -> list[dict[str, Any]]:
    """``metric`` of each of ``models`` with Gaussian noise on one of ``modalities`` at each of
    ``levels`` (``evaluate_noised``), one row per (model, modality, level), for a curve."""
    levels = list(levels)
    return [{"model": f"{name}, noisy {modality}", "noise": r["noise"], metric: r[metric]}
            for name, m in models.items() for modality in modalities
            for r in evaluate_noised(m, test, modality, levels, **kwargs)]
