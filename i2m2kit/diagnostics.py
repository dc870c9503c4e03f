"""Which dependency does the data hold, and which does a model use?

The selection-variable model gives the test directly: there is no inter-modality dependency
exactly when the modalities are independent given the label, p(x, x' | y) = p(x | y) p(x' | y).
Four diagnostics, each on trained models and a dataset (a ``TensorData`` or any map-style
dataset of ``(inputs dict, target)``), and one report over them:

* ``label_preserving_shuffle``: re-pair x' among the examples of the same label;
* ``cross_sample_shuffle``: shuffle A, B, or both, ignoring labels (Madaan et al., 2025);
* ``emap``: the empirical additive projection of the model (Hessel and Lee, EMNLP 2020);
* ``pid``: the partial information decomposition by the BROJA convex program (Bertschinger
  et al., 2014, as used by Liang et al., NeurIPS 2023), solved with cvxpy;
* ``dependency_report``: all of them, one table, a verdict from the thresholds below.

Each model is predicted once on the real pairs. A product of experts is a sum of experts'
logits, so a re-pairing only needs the experts that read both modalities run again: an
expert reading one modality just moves its logits with that modality. (A model with a shared
backbone is run whole, since its backbone might mix the modalities.)
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .data import TensorData
from .experts import I2M2
from .inference import Predictions, predict
from .likelihoods import Likelihood, as_likelihood

# The verdict's thresholds. An effect counts when it is larger than Z_SCORE of its noise
# (the spread over shuffles, or the bootstrap standard error of a score) and than
# MIN_EFFECT of the score (one point of accuracy): tiny effects on huge test sets are not
# a dependency worth a model.
Z_SCORE = 3.0
MIN_EFFECT = 0.01
BOOTSTRAP = 100
VERDICTS = ("intra-dominated", "inter-dominated", "both", "undetermined")


# ---------------------------------------------------------------------------- labels and scores


def label_codes(targets: torch.Tensor, likelihood: Likelihood | str = "categorical") -> torch.Tensor:
    """One discrete label per example, (N,) long: the class; for bernoulli targets the
    combination of labels; for soft targets (class probabilities, answer scores) the best one."""
    return as_likelihood(likelihood).labels(targets)


def score(logits: torch.Tensor, targets: torch.Tensor, likelihood: Likelihood, metric: str) -> float:
    """One metric of (N, K) logits against targets, from probabilities, as ``evaluate`` scores."""
    if not torch.isfinite(logits).all():
        raise FloatingPointError("model produced non-finite logits")
    return likelihood.score(logits, targets, metric)


def log_likelihood(model: I2M2, logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean log-likelihood of the targets: minus the model's own loss."""
    return -float(model.loss(logits.float(), targets))


def baseline_score(targets: torch.Tensor, likelihood: Likelihood, metric: str) -> float:
    """The score of the best constant prediction: the majority class (accuracy), chance
    (AUROC), the answer that scores best on average (VQA score)."""
    logits = likelihood.prior_logits(targets)
    return score(logits.expand(len(targets), -1).float(), targets, likelihood, metric)


def score_se(logits: torch.Tensor, targets: torch.Tensor, likelihood: Likelihood, metric: str,
             resamples: int = BOOTSTRAP, seed: int = 0) -> float:
    """Standard error of a score over the examples: exact for a mean over examples (accuracy,
    VQA score), by bootstrap otherwise (AUROC, ...)."""
    values = likelihood.per_example(logits, targets, metric)
    if values is not None:
        return float(values.std() / math.sqrt(len(values)))
    g = torch.Generator().manual_seed(seed)
    n, values = len(targets), []
    for _ in range(resamples):
        rows = torch.randint(0, n, (n,), generator=g)
        try:
            values.append(score(logits[rows], targets[rows], likelihood, metric))
        except KeyError:  # e.g. AUROC of a resample holding one class only
            continue
    return float(np.std(values)) if len(values) > 1 else float("nan")


# ---------------------------------------------------------------------------- re-pairing


def label_preserving_permutation(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A permutation that maps each example to another of the same label, uniformly."""
    order = torch.empty(len(labels), dtype=torch.long)
    for c in labels.unique():
        members = (labels == c).nonzero().squeeze(1)
        order[members] = members[torch.randperm(len(members), generator=generator)]
    return order


class Repaired(Dataset):
    """``data`` with some modalities taken from other examples: example i reads modality m
    from example ``orders[m][i]``; the target stays that of example i."""

    def __init__(self, data: Dataset, orders: Mapping[str, torch.Tensor]):
        self.data, self.orders = data, dict(orders)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i):
        inputs, target = self.data[i]
        for m, order in self.orders.items():
            inputs = {**inputs, m: self.data[int(order[i])][0][m]}
        return inputs, target


def repaired(data: Dataset, orders: Mapping[str, torch.Tensor]) -> Dataset:
    if isinstance(data, TensorData):  # index whole tensors rather than example by example
        return TensorData({m: x[orders[m]] if m in orders else x for m, x in data.inputs.items()}, data.targets)
    return Repaired(data, orders)


def _joint_names(model: I2M2) -> list[str]:
    return [n for n, e in model.experts.items() if e.is_inter]


def repaired_logits(model: I2M2, data: Dataset, base: Predictions, orders: Mapping[str, torch.Tensor],
                    **predict_kwargs: Any) -> torch.Tensor:
    """The model's (N, K) logits on ``data`` re-paired by ``orders``, given its predictions on
    the real pairs: uni-modal experts' logits move with their modality, joint experts run again."""
    if model.backbone is not None:
        return predict(model, repaired(data, orders), **predict_kwargs).logits
    total, rerun = torch.zeros_like(base.logits), []
    for name, z in base.expert_logits.items():
        reads = model.experts[name].reads
        moved = [m for m in reads if m in orders]
        if not moved:
            total += z
        elif len(reads) == 1:
            total += z[orders[moved[0]]]
        else:
            rerun.append(name)
    if rerun:
        total += predict(model.subset(*rerun), repaired(data, orders), **predict_kwargs).logits
    return total


def _predict_all(models: Mapping[str, I2M2], data: Dataset, **predict_kwargs) -> dict[str, Predictions]:
    return {name: predict(m, data, **predict_kwargs) for name, m in models.items()}


def _check(models: Mapping[str, I2M2]) -> tuple[str, tuple[str, ...]]:
    if not models:
        raise ValueError("the diagnostics need at least one trained model")
    likelihoods = {m.likelihood for m in models.values()}
    modalities = {m.modalities for m in models.values()}
    if len(likelihoods) != 1 or len(modalities) != 1:
        raise ValueError(f"the models must share one likelihood and one set of modalities, got likelihoods "
                         f"{sorted(lk.name for lk in likelihoods)} "
                         f"and modalities {sorted(modalities)}")
    mods = next(iter(modalities))
    if len(mods) != 2:
        raise ValueError(f"the diagnostics compare two modalities, the models read {list(mods)}")
    return likelihoods.pop(), mods


# ---------------------------------------------------------------------------- the diagnostics


def label_preserving_shuffle(models: Mapping[str, I2M2], data: Dataset, *, modality: str | None = None,
                             repeats: int = 10, metric: str | None = None, seed: int = 0,
                             predictions: Mapping[str, Predictions] | None = None,
                             **predict_kwargs: Any) -> list[dict[str, Any]]:
    """The selection-variable model's own test of inter-modality dependency.

    Each example's ``modality`` (default the second) is re-paired with that of another example
    of the same label, ``repeats`` times. If the modalities are independent given the label
    (no selection effect), re-paired data has the real data's distribution, so no model's
    score can change; a drop is inter-modality dependency that the model uses. Under that
    null the real pairs are one more draw of the same exchangeable shuffles, so
    ``p_value = (1 + #{shuffled score >= real score}) / (repeats + 1)`` is an exact
    permutation p-value, and ``z`` the drop in standard deviations of the shuffled scores.

    Returns one row per model: score (real), shuffled mean and std, drop, z, p_value, and
    the same for the log-likelihood (``log_likelihood``, ``log_likelihood_drop``).
    """
    likelihood, mods = _check(models)
    modality = modality or mods[-1]
    if modality not in mods:
        raise KeyError(f"modality={modality!r}: the models read {list(mods)}")
    if repeats < 2:
        raise ValueError(f"repeats must be at least 2 (a spread needs two shuffles), got {repeats}")
    metric = metric or likelihood.default_metric
    base = dict(predictions or _predict_all(models, data, **predict_kwargs))
    targets = next(iter(base.values())).targets
    labels = likelihood.labels(targets)
    g = torch.Generator().manual_seed(seed)
    orders = [label_preserving_permutation(labels, g) for _ in range(repeats)]
    rows = []
    for name, model in models.items():
        real = score(base[name].logits, targets, likelihood, metric)
        real_ll = log_likelihood(model, base[name].logits, targets)
        shuffled, shuffled_ll = [], []
        for order in orders:
            z = repaired_logits(model, data, base[name], {modality: order}, **predict_kwargs)
            shuffled.append(score(z, targets, likelihood, metric))
            shuffled_ll.append(log_likelihood(model, z, targets))
        mean, std = float(np.mean(shuffled)), float(np.std(shuffled, ddof=1))
        rows.append({
            "model": name, "metric": metric, "score": real, "shuffled": mean, "shuffled_std": std, "drop": real - mean,
            "z": (real - mean) / std if std > 0 else None,  # None: every shuffle scored alike
            "p_value": (1 + sum(s >= real for s in shuffled)) / (repeats + 1),
            "log_likelihood": real_ll, "log_likelihood_drop": real_ll - float(np.mean(shuffled_ll)),
            "log_likelihood_drop_std": float(np.std(shuffled_ll, ddof=1)), "repeats": repeats,
        })
    return rows


def cross_sample_shuffle(models: Mapping[str, I2M2], data: Dataset, *, metric: str | None = None, seed: int = 0,
                         predictions: Mapping[str, Predictions] | None = None,
                         **predict_kwargs: Any) -> list[dict[str, Any]]:
    """Scores with modality A shuffled, B shuffled, and both, ignoring labels, against normal
    (the multimodal-spectrum benchmark, Madaan et al., 2025). A model that falls to the
    baseline when A is shuffled relies on A; one that keeps its score relies on B alone."""
    likelihood, mods = _check(models)
    metric = metric or likelihood.default_metric
    base = dict(predictions or _predict_all(models, data, **predict_kwargs))
    targets = next(iter(base.values())).targets
    a, b = mods
    g = torch.Generator().manual_seed(seed)
    rho, pi = torch.randperm(len(targets), generator=g), torch.randperm(len(targets), generator=g)
    rows = []
    for name, model in models.items():
        # One evaluation of the pairs (x_j, x'_rho(j)) gives all three conditions, each with uniform
        # shuffles: b shuffled is row i; a shuffled (x'_i beside another x) is row rho^-1(i);
        # both shuffled (x from pi(i), x' from rho(pi(i))) is row pi(i). Targets stay y_i.
        z = repaired_logits(model, data, base[name], {b: rho}, **predict_kwargs)
        conditions = {"normal": base[name].logits, f"{a} shuffled": z[rho.argsort()], f"{b} shuffled": z,
                      "both shuffled": z[pi]}
        rows.append({"model": name, "metric": metric,
                     **{c: score(logits, targets, likelihood, metric) for c, logits in conditions.items()}})
    return rows


def _materialise(data: Dataset, rows: torch.Tensor) -> TensorData:
    """Some examples of any map-style dataset as one in-memory TensorData."""
    if isinstance(data, TensorData):
        return subset(data, rows)
    items = [data[int(i)] for i in rows]
    inputs = {m: torch.stack([torch.as_tensor(it[0][m]) for it in items]) for m in items[0][0]}
    return TensorData(inputs, torch.stack([torch.as_tensor(it[1]) for it in items]))


def emap(models: Mapping[str, I2M2], data: Dataset, *, references: int = 8, max_examples: int = 2000,
         metric: str | None = None, seed: int = 0, predictions: Mapping[str, Predictions] | None = None,
         **predict_kwargs: Any) -> list[dict[str, Any]]:
    """The empirical multimodally-additive projection (Hessel and Lee, EMNLP 2020).

    ``f_emap(x_i, x'_i) = mean_j f(x_i, x'_j) + mean_j f(x_j, x'_i) - mean_jk f(x_j, x'_k)`` on
    the logits: the best additive approximation of f on the sample. ``gap = score(f) -
    score(f_emap)`` is what the model gains from interactions between the modalities. For a
    product of experts only the joint experts need projecting (the others are additive). The
    means run over ``references`` examples drawn from the sample (one set for all three
    terms: for an additive f the projection is then exact, whatever the draw), on at most
    ``max_examples`` examples. Returns one row per model: score, emap_score, gap, and the
    log-likelihood gap; models without a joint expert have gap 0 by construction. Given the
    models' ``predictions`` on all of ``data`` (as the report has them), the sample is not
    predicted again.
    """
    likelihood, (a, b) = _check(models)
    metric = metric or likelihood.default_metric
    g = torch.Generator().manual_seed(seed)
    n = len(data)
    rows_used = torch.randperm(n, generator=g)[:max_examples].sort().values if n > max_examples else torch.arange(n)
    sample = _materialise(data, rows_used)
    refs = torch.randperm(len(sample), generator=g)[:references]
    out = []
    for name, model in models.items():
        if predictions is None:
            base = predict(model, sample, **predict_kwargs)
        else:  # the rows of the sample in predictions on all of data
            p = predictions[name]
            base = Predictions(p.logits[rows_used], {e: z[rows_used] for e, z in p.expert_logits.items()},
                               p.targets[rows_used], p.likelihood)
        targets = base.targets
        joint = [n_ for n_ in _joint_names(model) if n_ in base.expert_logits]
        row = {"model": name, "metric": metric, "score": score(base.logits, targets, likelihood, metric),
               "log_likelihood": log_likelihood(model, base.logits, targets), "examples": len(sample)}
        if not joint:
            row.update(emap_score=row["score"], gap=0.0, log_likelihood_gap=0.0)
            out.append(row)
            continue
        inter = model.subset(*joint)
        f = sum(base.expert_logits[j] for j in joint)

        def with_reference(modality: str, r: int) -> torch.Tensor:
            x = sample.inputs[modality]
            pinned = {**sample.inputs, modality: x[r:r + 1].expand_as(x)}
            return predict(inter, TensorData(pinned, targets), **predict_kwargs).logits

        over_b = torch.stack([with_reference(b, int(r)) for r in refs])  # [r, i] = f(x_i, x'_r)
        over_a = torch.stack([with_reference(a, int(r)) for r in refs])  # [r, i] = f(x_r, x'_i)
        projected = over_b.mean(0) + over_a.mean(0) - over_b[:, refs].mean((0, 1))
        z = base.logits - f + projected
        row["emap_score"] = score(z, targets, likelihood, metric)
        row["gap"] = row["score"] - row["emap_score"]
        row["log_likelihood_gap"] = row["log_likelihood"] - log_likelihood(model, z, targets)
        out.append(row)
    return out


# ---------------------------------------------------------------------------- PID


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def _mutual_information(p: np.ndarray) -> float:
    """I(A; B) in bits of a joint distribution p[a, b]."""
    return _entropy(p.sum(1)) + _entropy(p.sum(0)) - _entropy(p.ravel())


def pid_from_distribution(p: np.ndarray) -> dict[str, float]:
    """Partial information decomposition, in bits, of a joint distribution ``p[x1, x2, y]``.

    BROJA (Bertschinger et al., 2014): Q* maximises H_Q(Y | X1, X2) over the distributions
    with the same (X1, Y) and (X2, Y) marginals as p (a convex program, solved by cvxpy).
    Then uniqueness U1 = I_Q*(X1; Y | X2), U2 likewise, redundancy R = I(X1; Y) - U1 and
    synergy S = I_p(Y; X1, X2) - I_Q*(Y; X1, X2); R + U1 + U2 + S = I_p(Y; X1, X2).
    """
    import cvxpy as cp
    import scipy.sparse as sp

    p = np.asarray(p, dtype=np.float64)
    if p.ndim != 3 or (p < 0).any() or not p.sum() > 0:
        raise ValueError(f"p must be a non-negative (x1, x2, y) array with positive mass, got shape {p.shape}")
    p = p / p.sum()
    n1, n2, ny = p.shape
    p1y, p2y = p.sum(1), p.sum(0)
    # only cells whose two pairwise marginals are positive can carry mass under Q
    support = (p1y[:, None, :] > 0) & (p2y[None, :, :] > 0)
    cells = np.argwhere(support)
    q = cp.Variable(len(cells), nonneg=True)
    # Q(x1, x2) beside each cell: the sum of q over the cells of the same (x1, x2), a sparse linear map
    to_pair = sp.csr_matrix((np.ones(len(cells)), (cells[:, 0] * n2 + cells[:, 1], np.arange(len(cells)))),
                            shape=(n1 * n2, len(cells)))
    q_pair = (to_pair.T @ to_pair) @ q
    constraints = []
    for marginal, axis in ((p1y, 0), (p2y, 1)):  # Q(x1, y) = P(x1, y) and Q(x2, y) = P(x2, y)
        keys = cells[:, axis] * ny + cells[:, 2]
        rows = sp.csr_matrix((np.ones(len(cells)), (keys, np.arange(len(cells)))), shape=(marginal.size, len(cells)))
        constraints.append(rows @ q == marginal.ravel())
    problem = cp.Problem(cp.Maximize(-cp.sum(cp.rel_entr(q, q_pair))), constraints)
    problem.solve(solver=cp.CLARABEL)
    if problem.status not in ("optimal", "optimal_inaccurate"):
        raise RuntimeError(f"the BROJA program did not solve: {problem.status}")
    qs = np.zeros_like(p)
    qs[tuple(cells.T)] = np.clip(q.value, 0, None)
    qs /= qs.sum()
    mi_p = _mutual_information(p.reshape(n1 * n2, ny))
    mi_q = _mutual_information(qs.reshape(n1 * n2, ny))
    mi_1, mi_2 = _mutual_information(p1y), _mutual_information(p2y)
    u1, u2 = max(mi_q - mi_2, 0.0), max(mi_q - mi_1, 0.0)
    return {"redundancy": max(mi_1 - u1, 0.0), "unique_1": u1, "unique_2": u2, "synergy": max(mi_p - mi_q, 0.0),
            "total": mi_p}


def pid(x1: np.ndarray, x2: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """PID, in bits, of samples of three discrete variables (integer codes, (N,) each)."""
    x1, x2, y = (np.asarray(v).astype(np.int64).ravel() for v in (x1, x2, y))
    if not len(x1) == len(x2) == len(y) or not len(y):
        raise ValueError(f"x1, x2 and y need one code per sample each, got {len(x1)}, {len(x2)}, {len(y)}")
    counts = np.zeros((x1.max() + 1, x2.max() + 1, y.max() + 1))
    np.add.at(counts, (x1, x2, y), 1)
    return pid_from_distribution(counts)


def discretise(features: torch.Tensor, clusters: int = 8, seed: int = 0) -> np.ndarray:
    """Integer codes of continuous features (N, D) by k-means, for PID on continuous data.
    Logits are centred per example first (they are defined up to a shift)."""
    from sklearn.cluster import KMeans

    f = features.double()
    f = (f - f.mean(1, keepdim=True)).numpy() if f.ndim == 2 and f.shape[1] > 1 else f.reshape(len(f), -1).numpy()
    clusters = min(clusters, len(np.unique(f, axis=0)))
    return KMeans(clusters, n_init=3, random_state=seed).fit_predict(f)


def cap_codes(codes: np.ndarray, keep: int = 16) -> np.ndarray:
    """The ``keep - 1`` most frequent codes, and one code for all others (PID's table is
    clusters x clusters x labels: thousands of answers would not fit)."""
    codes = np.asarray(codes)
    values, counts = np.unique(codes, return_counts=True)
    if len(values) <= keep:
        return np.searchsorted(values, codes)
    top = values[np.argsort(-counts)[:keep - 1]]
    lookup = {v: i for i, v in enumerate(top)}
    return np.array([lookup.get(c, keep - 1) for c in codes])


# ---------------------------------------------------------------------------- the report


@dataclass
class DependencyReport:
    """Every diagnostic over one set of trained models, and the verdict they support."""

    metric: str
    baseline: float  # the best constant prediction's score
    examples: int
    modalities: tuple[str, str]
    rows: list[dict[str, Any]]  # one per model: score, shuffles, EMAP, their spreads
    pid: dict[str, dict[str, float]]  # "data" and one entry per model's predictions
    verdict: str  # one of VERDICTS
    reasons: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def sentence(self) -> str:
        return f"Verdict: {self.verdict}. " + " ".join(self.reasons)

    def summary(self) -> str:
        """The sentence, each model's label-preserving shuffle and EMAP gap, and the PID: what
        the notebooks print under their dependency section."""
        lines = [self.sentence()]
        lines += [f"  {r['model']:10s} {self.metric} {r['score']:.3f}; re-paired within labels {r['shuffled']:.3f} "
                  f"(drop {r['drop']:+.3f} ± {r['shuffled_std']:.3f}); EMAP gap {r['emap_gap']:+.3f}" for r in self.rows]
        lines.append("PID of the data (bits): " + ", ".join(f"{k} {v:.3f}" for k, v in self.pid["data"].items()))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def verdict(rows: Sequence[Mapping[str, Any]], baseline: float) -> tuple[str, list[str]]:
    """intra-dominated, inter-dominated, both, or undetermined, with the reasons.

    intra: the best model without a joint expert beats the baseline by more than Z_SCORE
    bootstrap standard errors and MIN_EFFECT. inter: a model with a joint expert loses more
    than Z_SCORE shuffle standard deviations and MIN_EFFECT under the label-preserving
    shuffle. Undetermined when no model beats the baseline that way.
    """
    def beats(r) -> bool:
        return r["score"] - baseline > max(Z_SCORE * (r.get("score_se") or 0.0), MIN_EFFECT)

    def drops(r) -> bool:
        return r["drop"] > max(Z_SCORE * r["shuffled_std"], MIN_EFFECT)

    reasons = []
    if not any(beats(r) for r in rows):
        best = max(rows, key=lambda r: r["score"])
        return "undetermined", [f"No model beats the baseline ({baseline:.3f}) beyond its noise "
                                f"(best: {best['model']} {best['score']:.3f}): the data say nothing either way."]
    additive = [r for r in rows if not r["has_joint_expert"]]
    joint = [r for r in rows if r["has_joint_expert"]]
    intra = any(beats(r) for r in additive)
    inter = any(drops(r) for r in joint)
    if additive:
        best = max(additive, key=lambda r: r["score"])
        reasons.append(f"Without a joint expert the best model ({best['model']}) scores {best['score']:.3f} against "
                       f"the baseline {baseline:.3f}: {'intra-modality signal' if intra else 'no intra-modality signal beyond noise'}.")
    if joint:
        most = max(joint, key=lambda r: r["drop"])
        spread = "no spread over the shuffles" if most["z"] is None else f"{most['z']:.1f} shuffle std"
        reasons.append(f"Re-pairing within labels moves {most['model']} by {-most['drop']:+.3f} "
                       f"({spread}, p = {most['p_value']:.2f}): "
                       f"{'it uses inter-modality dependency' if inter else 'no inter-modality dependency beyond noise'}.")
    if intra and inter:
        return "both", reasons
    if inter:
        return "inter-dominated", reasons
    if intra:
        return "intra-dominated", reasons
    return "undetermined", reasons + ["Only a model with a joint expert beats the baseline, and it loses nothing "
                                      "when re-paired within labels: which dependency it uses is not determined."]


def subset(data: Dataset, rows: torch.Tensor) -> Dataset:
    """Some examples of a dataset (whole tensors sliced for a TensorData)."""
    if isinstance(data, TensorData):
        return TensorData({m: x[rows] for m, x in data.inputs.items()}, data.targets[rows])
    return torch.utils.data.Subset(data, rows.tolist())


def dependency_report(models: Mapping[str, I2M2], data: Dataset, *, repeats: int = 10, references: int = 8,
                      max_examples: int = 2000, emap_examples: int = 500, clusters: int = 8,
                      metric: str | None = None, features: Mapping[str, torch.Tensor] | None = None,
                      seed: int = 0, progress: bool = False, **predict_kwargs: Any) -> DependencyReport:
    """Every diagnostic for a set of trained models (e.g. ``{"uni:x": ..., "intra": ...,
    "inter": ..., "i2m2": ...}``) on ``data`` (at most ``max_examples`` of it, drawn at random;
    EMAP on ``emap_examples`` of those), and a verdict (see ``verdict``).

    PID discretises each modality by k-means (``clusters``) on ``features[modality]``, (N, D)
    per example in the order of ``data`` after that draw; by default the logits of the
    uni-modal model of that modality (``uni:<modality>``), or else of the experts that read it
    alone. It is applied to the data (the labels) and to each model's predictions.
    """
    likelihood, mods = _check(models)
    metric = metric or likelihood.default_metric
    for name, value, low in (("repeats", repeats, 2), ("references", references, 1), ("max_examples", max_examples, 2),
                             ("emap_examples", emap_examples, 2), ("clusters", clusters, 2)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer of at least {low}, got {value!r}")
    if len(data) > max_examples:
        data = subset(data, torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:max_examples])
    seconds: dict[str, float] = {}
    steps = tqdm(total=5, desc="dependency report", disable=not progress)

    def step(name: str, started: float) -> None:
        seconds[name] = time.perf_counter() - started
        steps.update()

    started = time.perf_counter()
    base = _predict_all(models, data, **predict_kwargs)
    targets = next(iter(base.values())).targets
    step("predict", started)

    started = time.perf_counter()
    rows = {r["model"]: {**r, "has_joint_expert": bool(_joint_names(models[r["model"]]))}
            for r in label_preserving_shuffle(models, data, repeats=repeats, metric=metric, seed=seed,
                                              predictions=base, **predict_kwargs)}
    for name, r in rows.items():
        r["score_se"] = score_se(base[name].logits, targets, likelihood, metric, seed=seed)
    step("label_preserving_shuffle", started)

    started = time.perf_counter()
    for r in cross_sample_shuffle(models, data, metric=metric, seed=seed, predictions=base, **predict_kwargs):
        rows[r["model"]].update({k: v for k, v in r.items() if k not in ("model", "metric")})
    step("cross_sample_shuffle", started)

    started = time.perf_counter()
    for r in emap(models, data, references=references, max_examples=emap_examples, metric=metric, seed=seed,
                  predictions=base, **predict_kwargs):
        rows[r["model"]].update(emap_score=r["emap_score"], emap_gap=r["gap"],
                                emap_log_likelihood_gap=r["log_likelihood_gap"], emap_examples=r["examples"])
    step("emap", started)

    started = time.perf_counter()
    codes = {}
    for m in mods:
        f = (features or {}).get(m)
        if f is None and f"uni:{m}" in base:
            f = base[f"uni:{m}"].logits
        if f is None:  # the experts that read m alone, in the first model that has one
            alone = [base[n].expert_logits[e] for n, model in models.items()
                     for e, expert in model.experts.items() if expert.reads == (m,) and e in base[n].expert_logits]
            if not alone:
                raise ValueError(f"no model reads {m!r} alone, so PID has no features to discretise it: pass features")
            f = alone[0]
        codes[m] = discretise(f, clusters, seed)
    labels = cap_codes(likelihood.labels(targets).numpy())
    pids = {"data": pid(codes[mods[0]], codes[mods[1]], labels)}
    for name, p in base.items():
        predicted = likelihood.labels(likelihood.predicted(p.logits))
        pids[name] = pid(codes[mods[0]], codes[mods[1]], cap_codes(predicted.numpy()))
    step("pid", started)
    steps.close()

    baseline = baseline_score(targets, likelihood, metric)
    table = list(rows.values())
    decision, reasons = verdict(table, baseline)
    return DependencyReport(metric, baseline, len(targets), mods, table, pids, decision, reasons, seconds)
