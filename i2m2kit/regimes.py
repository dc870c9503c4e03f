"""The regime map: where each model stands against the Bayes limit.

Over a grid of (intra strength, inter strength) and training-set sizes, sample data from the
selection-variable model, train the models the paper compares and report each one's test
accuracy next to the Bayes accuracy of the same test set. Intra-modality models should fall
to chance where only inter-modality signal exists; a product of experts should stay close to
the Bayes limit everywhere.
"""

from __future__ import annotations

import itertools
from typing import Any, Mapping, Sequence

from tqdm.auto import tqdm

from .data import TensorData
from .diagnostics import dependency_report
from .protocol import PRETRAINED_MODELS, compare_models
from .simulate import SelectionModel
from .tasks import synthetic


def regime_map(
    grid: Mapping[str, Sequence[Any]],
    sizes: Sequence[int] = (20_000,),
    *,
    regimes: Sequence[str] = ("joint", "pretrain_finetune"),
    simulator: Mapping[str, Any] | None = None,
    n_valid: int = 5_000,
    n_test: int = 20_000,
    hidden: int = 64,
    seed: int = 0,
    progress: bool = True,
    diagnose: bool = False,
    weigh: bool = False,
    **fit_kwargs: Any,
) -> list[dict[str, Any]]:
    """Train and score every model at every grid point; one row per (point, size, regime, model).

    Args:
        grid: ``SelectionModel`` arguments to vary, e.g. ``{"intra": [0, 1, 2], "inter": [0, 2, 4]}``;
            every combination is a grid point. A single number for ``intra`` applies to both
            modalities.
        sizes: training-set sizes; smaller sets are prefixes of the largest (nested samples).
        regimes: ``"joint"`` trains all five models from scratch; ``"pretrain_finetune"``
            also trains the intra-modality model and I2M2 expert by expert first.
        simulator: the ``SelectionModel`` arguments held fixed (n_classes, dims, ...).
        diagnose: also run ``diagnostics.dependency_report`` on the jointly trained models of
            each point and size: every row of it gets the point's ``verdict`` and the
            ``expected_verdict`` (the dependency the simulator holds), and each model's row its
            ``label_shuffle_drop`` and ``emap_gap``.
        weigh: also score ``"i2m2 (weighted)"`` and ``"i2m2 (selected)"`` (``compare_models(weigh=True)``:
            the experts trained alone in the joint regime's baselines, weighed on validation, and the
            better of that and the published I2M2 on validation; no more training).
        fit_kwargs: passed to ``fit`` (epochs, optimizer, batch_size, patience, device, ...).
    """
    fixed = {"n_classes": 2, "dims": (8, 8), **(simulator or {})}
    fit_kwargs = {"monitor": "accuracy", **fit_kwargs}
    keys = list(grid)
    points = list(itertools.product(*(grid[k] for k in keys)))
    rows = []
    for values in tqdm(points, desc="regime grid", disable=not progress):
        point = dict(zip(keys, values))
        kwargs = {**fixed, **point}
        if isinstance(kwargs.get("intra"), (int, float)):
            kwargs["intra"] = (kwargs["intra"], kwargs["intra"])
        sim = SelectionModel(seed=seed, **kwargs)
        train_all, valid, test = (sim.sample(n) for n in (max(sizes), n_valid, n_test))
        bayes = sim.bayes_accuracy(test)
        for n in sizes:
            train = TensorData({k: v[:n].cpu() for k, v in train_all.inputs.items()}, train_all.y[:n].cpu())
            for regime in regimes:
                names = None if regime == "joint" else PRETRAINED_MODELS
                trained: dict | None = {} if diagnose and regime == "joint" else None
                point_rows = []
                for r in compare_models(
                    lambda: synthetic.build_model(sim.dims, sim.n_classes, hidden),
                    train, synthetic.dataset(valid), synthetic.dataset(test),
                    names=names, regime=regime, seed=seed, progress=False, trained=trained,
                    weigh=weigh and regime == "joint", **fit_kwargs,
                ):
                    label = r["model"] if regime == "joint" else f"{r['model']} (pretrained)"
                    point_rows.append({**point, "n_train": n, "regime": regime, "label": label,
                                       "model": r["model"], "accuracy": r["accuracy"], "bayes_accuracy": bayes,
                                       "of_bayes": r["accuracy"] / bayes, "train_seconds": r["train_seconds"]})
                if diagnose and regime == "joint":
                    published = {k: v for k, v in trained.items() if not k.startswith("i2m2 (")}  # the paper's five
                    report = dependency_report(published, synthetic.dataset(test), seed=seed,
                                               device=fit_kwargs.get("device", "auto"))
                    by_model = {d["model"]: d for d in report.rows}
                    for row in point_rows:
                        row.update(verdict=report.verdict, expected_verdict=synthetic.expected_verdict(sim))
                        if row["model"] in by_model:
                            row.update(label_shuffle_drop=by_model[row["model"]]["drop"],
                                       emap_gap=by_model[row["model"]]["emap_gap"])
                rows += point_rows
    return rows


def sampling_error(accuracy: float, n_test: int) -> float:
    """Standard error of an accuracy measured on n_test independent samples."""
    return (accuracy * (1 - accuracy) / n_test) ** 0.5


def findings(rows: Sequence[Mapping[str, Any]], n_test: int, n_classes: int = 2) -> list[str]:
    """Plain sentences about a regime map, computed from its rows: where I2M2 stands against
    the Bayes limit and against the other models, and where each other model fails.

    A gap counts only when it exceeds twice the sampling error of the test accuracy.
    """
    chance = 1.0 / n_classes
    point_keys = [k for k in rows[0] if k not in
                  ("regime", "label", "model", "accuracy", "bayes_accuracy", "of_bayes", "train_seconds",
                   "verdict", "expected_verdict", "label_shuffle_drop", "emap_gap")]
    groups: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        g = groups.setdefault(tuple(r[k] for k in point_keys), {"bayes": r["bayes_accuracy"]})
        g[r["label"]] = r["accuracy"]

    def where(point: tuple) -> str:
        return ", ".join(f"{k}={v}" for k, v in zip(point_keys, point))

    out = []
    i2m2 = {p: g["i2m2"] / g["bayes"] for p, g in groups.items() if "i2m2" in g}
    if i2m2:
        worst = min(i2m2, key=i2m2.get)
        out.append(f"I2M2 reaches between {min(i2m2.values()):.3f} and {max(i2m2.values()):.3f} of the "
                   f"Bayes accuracy (lowest at {where(worst)}).")
    behind, fusion_fails, intra_chance = [], [], []
    for p, g in groups.items():
        se = 2 * sampling_error(g["bayes"], n_test)
        if {"i2m2", "intra", "inter"} <= set(g):
            gap = max(g["intra"], g["inter"]) - g["i2m2"]
            if gap > se:
                behind.append(f"{where(p)} (by {gap:.3f})")
        unis = [v for k, v in g.items() if k.startswith("uni:")]
        if unis and "inter" in g and max(unis) - g["inter"] > se:
            fusion_fails.append(f"{where(p)} ({g['inter']:.3f} vs {max(unis):.3f})")
        if "intra" in g and abs(g["intra"] - chance) <= se + 0.01 and g["bayes"] > chance + 0.1:
            intra_chance.append(where(p))
    out.append("I2M2 is never behind the better of the intra- and inter-modality models by more than "
               "sampling error." if not behind else
               "I2M2 falls behind the better of the intra- and inter-modality models at " + "; ".join(behind) + ".")
    for label in ("i2m2", "i2m2 (weighted)", "i2m2 (selected)"):  # against every baseline, uni-modal included
        gaps = {p: max(v for k, v in g.items() if k.startswith("uni:") or k in ("intra", "inter")) - g[label]
                for p, g in groups.items() if label in g and "intra" in g}
        if gaps:
            worst = max(gaps, key=gaps.get)
            name = {"i2m2": "The published I2M2", "i2m2 (weighted)": "The weighted I2M2"}.get(label, "The selected I2M2")
            out.append(f"{name} is at worst {100 * gaps[worst]:.1f} points of accuracy below the best of its "
                       f"baselines (uni-modal, intra, inter), at {where(worst)}." if gaps[worst] > 0 else
                       f"{name} is at or above the best of its baselines (uni-modal, intra, inter) in every cell.")
    if fusion_fails:
        out.append("The inter-modality (fusion) model is worse than the best uni-modal model at "
                   + "; ".join(fusion_fails) + ".")
    if intra_chance:
        out.append("The intra-modality model is at chance while the Bayes accuracy is well above it at "
                   + "; ".join(intra_chance) + ".")
    return out
