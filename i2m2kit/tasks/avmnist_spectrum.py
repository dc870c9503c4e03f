"""The dependency spectrum on real signals: AV-MNIST with a share of inter-modality pairs.

``prepare_avmnist.py --inter-share RHO`` keeps the published pairs (image and recording of
the label's digit) for all but a share RHO of the examples; for those the image shows a digit
a drawn uniformly and the recording says (y - a) mod 10, so the label lives only in the
relation of the two modalities. One knob turns the benchmark from "intra only" (0, the
published benchmark) to "inter only" (1).

What each model can reach with perfect digit recognition (``perfect_recognition``): a
uni-modal model is right on the published pairs and at chance on the others, 1 - 0.9 RHO; an
intra-modality model (a sum of per-modality logits) cannot represent (a + b) mod 10 and does
about as well; a joint expert can read the relation, and errs only where a pair's two digits
agree and it cannot tell a published pair from an inter-modality one: 1 - 0.09 RHO below
RHO = 10/11. With the real, degraded signals the digits are far from perfectly recognised;
``relation_posterior`` composes two actual recognisers into the posterior they allow.

    rows = avmnist_spectrum.train_share(folder, epochs=3, seeds=[0])   # one row per model
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from .. import contributions
from ..diagnostics import label_preserving_shuffle
from ..experts import I2M2
from ..runner import prepare_data
from ..inference import predict
from ..data import TensorData
from ..protocol import PRETRAINED_MODELS, Recipe, compare_models
from . import avmnist

SHARES = (0.0, 0.25, 0.5, 0.75, 1.0)
REFERENCE = "Bayes of the share-0 recognisers"  # the row name of relation_posterior's accuracy


# ---------------------------------------------------------------------- the task contract: AV-MNIST's


def load(path: str | Path, **options: Any) -> dict[str, TensorData]:
    """``avmnist.load``: the folder's splits (built at any share by ``prepared``)."""
    return avmnist.load(path, **options)


def build_model(**options: Any) -> I2M2:
    """``avmnist.build_model``: the experts do not depend on the share."""
    return avmnist.build_model(**options)


def recipe(epochs: int | None = None, regime: str = "pretrain_finetune") -> Recipe:
    """``avmnist.recipe``: the published one, at every share."""
    return avmnist.recipe(epochs, regime)


def selection_metric(data: dict[str, TensorData], preferred: str | None = None) -> str:
    """``avmnist.selection_metric``."""
    return avmnist.selection_metric(data, preferred)


def perfect_recognition(share: float, n_classes: int = avmnist.N_CLASSES) -> dict[str, float]:
    """Test accuracy of each kind of model at ``share`` if both digits were recognised perfectly.

    Exact, from the table of (digit shown, digit heard, label): ``uni``, the best a model of
    one modality can do (its digit is the label on published pairs and independent of it on
    the others: 1 - 0.9 share); ``joint``, the Bayes classifier of the two digits. ``intra`` is
    given the uni-modal value: a sum of an image term and an audio term cannot represent
    (a + b) mod 10 (for two classes, XOR, provably none can; for ten, maximum-likelihood
    additive fits to this table land within about 0.07 of the uni-modal value, above or below it
    with the slightest regularisation, so no sharper figure is claimed).
    """
    p = torch.zeros(n_classes, n_classes, n_classes, dtype=torch.float64)  # [shown, heard, label]
    digits = torch.arange(n_classes)
    p[digits, digits, digits] += (1 - share) / n_classes
    for a in range(n_classes):
        p[a, (digits - a) % n_classes, digits] += share / n_classes ** 2
    uni = float(p.sum(1).max(-1).values.sum())
    return {"uni": uni, "intra": uni, "joint": float(p.max(-1).values.sum())}


def relation_posterior(image_logits: torch.Tensor, audio_logits: torch.Tensor, share: float) -> torch.Tensor:
    """log p(label | image, recording) at ``share``, composed from two digit recognisers.

    ``image_logits`` and ``audio_logits`` say which digit each modality shows (the uni-modal
    models trained on the published pairs, share 0, where the label is that digit). With
    uniform digits a published pair has label y with weight ``10 (1 - share) q_image(y)
    q_audio(y)`` and an inter-modality pair with weight ``share * sum_a q_image(a) q_audio(y -
    a)``. With calibrated recognisers this is the Bayes posterior given what they see: what
    a joint expert built on equally good digit recognition can reach.
    """
    if not 0 <= share <= 1:
        raise ValueError(f"share must be from 0 to 1, got {share}")
    q_image, q_audio = image_logits.softmax(-1), audio_logits.softmax(-1)
    n = q_image.shape[-1]
    shifted = torch.stack([q_audio.roll(a, dims=-1) for a in range(n)], dim=-2)  # [..., a, y] = q_audio(y - a)
    relation = (q_image.unsqueeze(-1) * shifted).sum(-2)  # a circular convolution over the digits
    weights = (1 - share) * n * q_image * q_audio + share * relation
    return (weights / weights.sum(-1, keepdim=True)).clamp_min(1e-30).log()


def prepared(raw: str | Path, folder: str | Path, share: float, n_train: int, n_test: int, seed: int = 0) -> Path:
    """``folder`` holding AV-MNIST at ``share`` with these sizes: built by the data script if
    absent, reused if its metadata says exactly this build, refused if it holds another."""
    folder = Path(folder)
    meta_file = folder / "metadata.json"
    wanted = {"inter_share": share, "sizes": {"train": n_train, "test": n_test}, "seed": seed}
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        found = {"inter_share": meta.get("inter_share", 0.0), "sizes": meta.get("sizes"), "seed": meta.get("seed")}
        if found != wanted:
            raise ValueError(f"{folder}: holds AV-MNIST built with {found}, not {wanted}; "
                             f"remove it or choose another folder")
        return folder
    return prepare_data("avmnist", raw, folder, args=("--no-progress", "--n-train", str(n_train), "--n-test", str(n_test),
                                                     "--seed", str(seed), "--inter-share", str(share)),
                        reads=avmnist.RAW_READS)


def accuracy_by_kind(logits: torch.Tensor, targets: torch.Tensor, inter: torch.Tensor) -> dict[str, float]:
    """Test accuracy on all pairs, on the published ones and on the inter-modality ones."""
    right = (logits.argmax(-1) == targets).double()
    return {"accuracy": float(right.mean()),
            "accuracy_published": float(right[~inter].mean()) if (~inter).any() else float("nan"),
            "accuracy_inter": float(right[inter].mean()) if inter.any() else float("nan")}


def score_models(trained: Mapping[str, I2M2], test, inter: torch.Tensor, *, share: float, regime: str, seed: int,
                 shuffle_repeats: int = 5, device: str = "auto") -> list[dict[str, Any]]:
    """One row per trained model: the accuracies of ``accuracy_by_kind`` and, for the models
    reading both modalities, the label-preserving shuffle's drop (the recordings re-paired
    within labels ``shuffle_repeats`` times; it grows with the share if they use the relation)."""
    preds = {n: predict(m, test, device=device) for n, m in trained.items()}
    both = {n: m for n, m in trained.items() if not n.startswith("uni:")}
    drops = {r["model"]: r for r in label_preserving_shuffle(both, test, repeats=shuffle_repeats, seed=seed,
                                                             device=device, predictions={n: preds[n] for n in both})}
    return [{"share": share, "regime": regime, "seed": seed, "model": name,
             **accuracy_by_kind(pred.logits, pred.targets, inter),
             "shuffle_drop": drops.get(name, {}).get("drop"), "shuffle_drop_std": drops.get(name, {}).get("shuffled_std")}
            for name, pred in preds.items()]


def deciding_experts(model: I2M2, test, inter: torch.Tensor, device: str = "auto") -> list[dict[str, Any]]:
    """For published and inter-modality pairs apart: how often each expert of ``model`` has the
    largest share of the winning margin, and how often the model is right there."""
    pred = predict(model, test, device=device)
    deciders = np.array(contributions.deciding_expert(pred.expert_logits))
    right = (pred.logits.argmax(-1) == pred.targets).numpy()
    rows = []
    for kind, mask in (("published pairs", ~inter.numpy()), ("inter-modality pairs", inter.numpy())):
        if mask.any():
            rows += [{"pairs": kind, "expert": name, "decides": float(np.mean(deciders[mask] == name)),
                      "accuracy": float(right[mask].mean()), "count": int(mask.sum())} for name in pred.expert_logits]
    return rows


def train_share(folder: str | Path, *, valid_size: int, epochs: int, seeds: Iterable[int] = (0,),
                regimes: Sequence[str] = ("pretrain_finetune", "joint"), shuffle_repeats: int = 5,
                device: str = "auto", progress: bool = True,
                ) -> tuple[list[dict[str, Any]], dict[tuple[str, int], dict[str, I2M2]]]:
    """The five models on the AV-MNIST in ``folder`` with the published recipe, per seed and regime.

    The single-expert models (uni-modal, inter) have no fine-tuning stage, so they are the same
    runs in both regimes and are trained once, with the first regime. Each row: ``share``,
    ``regime``, ``seed``, ``model``, the accuracies of ``accuracy_by_kind``, and for the models
    reading both modalities the label-preserving shuffle's drop (re-pairing the recordings
    within labels, ``shuffle_repeats`` times). Returns the rows and the trained models by
    (regime, seed).
    """
    share = avmnist.inter_share(folder)
    data = avmnist.load(folder, valid_size=valid_size)
    inter = avmnist.inter_pairs(folder, valid_size=valid_size)["test"]
    order = list(avmnist.build_model().baselines())
    rows, trained_all = [], {}
    for seed in seeds:
        single: dict[str, I2M2] = {}
        for regime in regimes:
            trained: dict[str, I2M2] = {}
            compare_models(avmnist.build_model, data["train"], data["valid"], data["test"], seed=seed,
                           names=list(PRETRAINED_MODELS) if single else None, trained=trained, progress=progress,
                           recipe=avmnist.recipe(epochs, regime), device=device)
            single = single or {n: m for n, m in trained.items() if n not in PRETRAINED_MODELS}
            merged = {**single, **trained}
            trained = {n: merged[n] for n in order}
            trained_all[regime, seed] = trained
            rows += score_models(trained, data["test"], inter, share=share, regime=regime, seed=seed,
                                 shuffle_repeats=shuffle_repeats, device=device)
    return rows, trained_all


def reference_rows(recognisers: Mapping[int, Mapping[str, I2M2]], folder: str | Path, *, valid_size: int,
                   regimes: Sequence[str] = ("pretrain_finetune", "joint"), device: str = "auto") -> list[dict[str, Any]]:
    """Rows ``REFERENCE``: the accuracy, on the test pairs in ``folder``, of the
    ``relation_posterior`` of each seed's uni-modal models trained at share 0
    (``recognisers``: {seed: models}), repeated for each regime so that it plots beside them."""
    share = avmnist.inter_share(folder)
    test = avmnist.load(folder, valid_size=valid_size, splits=("test",))["test"]
    inter = avmnist.inter_pairs(folder, valid_size=valid_size)["test"]
    rows = []
    for seed, models in recognisers.items():
        image, audio = (predict(models[f"uni:{m}"], test, device=device) for m in avmnist.MODALITIES)
        scores = accuracy_by_kind(relation_posterior(image.logits, audio.logits, share), image.targets, inter)
        rows += [{"share": share, "regime": regime, "seed": seed, "model": REFERENCE, **scores,
                  "shuffle_drop": None, "shuffle_drop_std": None} for regime in regimes]
    return rows


def over_seeds(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds of every number, per (share, regime, model)."""
    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault((r["share"], r["regime"], r["model"]), []).append(r)
    out = []
    for (share, regime, model), group in groups.items():
        row: dict[str, Any] = {"share": share, "regime": regime, "model": model, "seeds": [r["seed"] for r in group]}
        for key in ("accuracy", "accuracy_published", "accuracy_inter", "shuffle_drop"):
            values = [r[key] for r in group if r.get(key) is not None and np.isfinite(r[key])]
            if values:
                row[key], row[f"{key}_std"] = float(np.mean(values)), float(np.std(values))
        out.append(row)
    return out


# ---------------------------------------------------------------------- what notebook 01 shows


def spectrum(shares: Sequence[float], benchmark: Mapping[str, I2M2], benchmark_folder: str | Path, test, *, raw: str | Path,
             work: str | Path, n_train: int, n_test: int, valid_size: int, epochs: int, seed: int, regime: str,
             device: str = "auto") -> tuple[list[dict[str, Any]], dict[float, dict[str, I2M2]], dict[float, Path]]:
    """Notebook 01's section 6: at each share its own data (built under ``work`` from ``raw``)
    and five models (``train_share``, one seed and regime); share 0 is the ``benchmark`` models
    already trained on ``benchmark_folder`` (its ``test`` split loaded). Each share also gets the ``REFERENCE`` rows of the
    benchmark's uni-modal models. Returns the rows, the models and the folder of each share."""
    from ..runner import find_folder

    rows, models, folders = [], {}, {}
    for share in shares:
        if share == 0:  # the published benchmark: the models already trained
            folder, trained = Path(benchmark_folder), dict(benchmark)
            rows += score_models(trained, test, avmnist.inter_pairs(folder, valid_size=valid_size)["test"],
                                 share=0.0, regime=regime, seed=seed, device=device)
        else:
            folder = prepared(find_folder(raw) or raw, Path(work) / f"prepared_{n_train}_{n_test}_inter{share:g}",
                                    share, n_train, n_test)
            share_rows, by_run = train_share(folder, valid_size=valid_size, epochs=epochs, seeds=[seed],
                                             regimes=[regime], device=device)
            rows += share_rows
            trained = by_run[regime, seed]
        rows += reference_rows({seed: benchmark}, folder, valid_size=valid_size, regimes=[regime], device=device)
        models[share], folders[share] = trained, folder
    return rows, models, folders


def print_spectrum(rows: Sequence[Mapping[str, Any]], shares: Sequence[float]) -> None:
    """What the models reach at each share beside ``perfect_recognition``'s ceilings; then the
    claims of notebook 01's text, checked against these numbers."""
    by = {(r["share"], r["model"]): r for r in rows}
    for share in shares:
        c = perfect_recognition(share)
        print(f"share {share:g} (perfect digits: uni {c['uni']:.3f}, intra {c['intra']:.3f}, joint {c['joint']:.3f})")
        for r in (r for r in rows if r["share"] == share):
            kinds = "".join(f", {k} pairs {r['accuracy_' + k]:.3f}" for k in ("published", "inter")
                            if r["accuracy_" + k] == r["accuracy_" + k])  # NaN: no such pairs
            drop = f"; re-paired within labels: drop {r['shuffle_drop']:+.3f}" if r["shuffle_drop"] is not None else ""
            print(f"  {r['model']:34s} {r['accuracy']:.3f}{kinds}{drop}")
    for share in shares:
        best = max(("intra", "inter"), key=lambda m: by[share, m]["accuracy"])
        gap = by[share, "i2m2"]["accuracy"] - by[share, best]["accuracy"]
        where = "level with" if gap == 0 else f"{'above' if gap > 0 else 'below'}"
        print(f"share {share:g}: I2M2 {where} the better of intra and inter ({best}){f' by {abs(gap):.3f}' if gap else ''}")
    drops = [by[share, "i2m2"]["shuffle_drop"] for share in shares]
    print("I2M2's drop when recordings are re-paired within labels, by share: "
          + ", ".join(f"{s:g}: {d:+.3f}" for s, d in zip(shares, drops))
          + (": it grows with the share" if all(b > a for a, b in zip(drops, drops[1:])) else ": it does not grow with the share"))


def curve_rows(rows: Sequence[Mapping[str, Any]], shares: Sequence[float]) -> list[dict[str, Any]]:
    """``rows`` and the ``perfect_recognition`` ceilings of the intra model and the joint expert,
    as the accuracy-against-share curves draw them."""
    return [*rows, *({"share": share, "model": f"perfect digits: {kind}", "accuracy": perfect_recognition(share)[kind]}
                     for share in shares for kind in ("intra", "joint"))]


def deciders_at(folder: str | Path, model: I2M2, *, valid_size: int, device: str = "auto") -> list[dict[str, Any]]:
    """``deciding_experts`` of ``model`` on the test pairs in ``folder``, printed per kind of pair."""
    test = avmnist.load(folder, valid_size=valid_size, splits=("test",))["test"]
    rows = deciding_experts(model, test, avmnist.inter_pairs(folder, valid_size=valid_size)["test"], device=device)
    for kind in dict.fromkeys(r["pairs"] for r in rows):
        of_kind = [r for r in rows if r["pairs"] == kind]
        print(f"{kind} ({of_kind[0]['count']}): I2M2 right on {of_kind[0]['accuracy']:.1%}; decided by "
              + ", ".join(f"{r['expert']} {r['decides']:.0%}" for r in of_kind))
    return rows
