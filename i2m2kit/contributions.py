"""What each expert contributes to each prediction.

A product of experts predicts from a sum of logits, so every prediction decomposes exactly:

* **margin contributions**: the margin of the predicted class over the runner-up,
  ``z[pred] - z[runner]``, is the sum over experts of ``z_e[pred] - z_e[runner]``;
* **Shapley values**: with value ``v(S) = log p(class | experts in S)`` (no expert: uniform),
  each expert's average marginal gain over all orders; exact, since n experts have only
  2^n subsets (8 for I2M2's three) and each subset's prediction is a sum of logits;
* **flips**: the predictions that change when one expert is dropped;
* **agreement**: how often two experts alone would predict the same class;
* on simulated data, the **correlation** between each learned expert and the exact term of
  the posterior it should capture (see ``SelectionModel.terms``).

Functions take ``{expert name: (N, K) logits}`` as ``Output.expert_logits`` or
``Predictions.expert_logits`` hold them, for a multiclass head.
"""

from __future__ import annotations

import itertools
import math
from typing import Mapping

import torch

Logits = Mapping[str, torch.Tensor]


def _total(expert_logits: Logits, names) -> torch.Tensor:
    return torch.stack([expert_logits[n] for n in names]).sum(0)


def predicted_and_runner_up(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    top2 = logits.topk(2, dim=1).indices
    return top2[:, 0], top2[:, 1]


def class_and_best_other(logits: torch.Tensor, target: int | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``target`` as one class index per sample, and the combined model's best other class."""
    target = torch.as_tensor(target, dtype=torch.long).expand(len(logits)).to(logits.device)
    others = logits.scatter(1, target[:, None], -float("inf"))
    return target, others.argmax(1)


def margin_contributions(expert_logits: Logits, target: int | torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Each expert's share of the margin of the predicted class over the runner-up: (N,) each.

    The shares sum to the margin of the combined model exactly; a negative share means the
    expert argued for the runner-up and was overruled. With ``target`` (a class, or one per
    sample) the margin is that class's over the best other class instead: negative where the
    model does not predict it.
    """
    total = _total(expert_logits, expert_logits)
    pred, runner = predicted_and_runner_up(total) if target is None else class_and_best_other(total, target)
    rows = torch.arange(len(pred))
    return {n: z[rows, pred] - z[rows, runner] for n, z in expert_logits.items()}


def deciding_expert(expert_logits: Logits, target: int | torch.Tensor | None = None) -> list[str]:
    """Per sample, the expert with the largest share of the margin (of ``target``, if given)."""
    names = list(expert_logits)
    shares = torch.stack([margin_contributions(expert_logits, target)[n] for n in names], 1)
    return [names[i] for i in shares.argmax(1).tolist()]


def shapley_values(expert_logits: Logits, target: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Exact Shapley values of the experts for ``log p(target | experts)``: (N,) each.

    ``target`` defaults to the combined model's prediction. The empty coalition predicts the
    uniform distribution, so the values sum to ``log p(target) + log K``.
    """
    names = list(expert_logits)
    n = len(names)
    some = next(iter(expert_logits.values()))
    k = some.shape[1]
    if target is None:
        target = _total(expert_logits, names).argmax(1)
    rows = torch.arange(len(target))

    def value(coalition) -> torch.Tensor:
        if not coalition:
            return torch.full((len(target),), -math.log(k), dtype=some.dtype)
        return torch.log_softmax(_total(expert_logits, coalition), 1)[rows, target]

    values = {c: value(c) for r in range(n + 1) for c in itertools.combinations(names, r)}
    phi = {}
    for name in names:
        others = [m for m in names if m != name]
        total = torch.zeros(len(target), dtype=some.dtype)
        for r in range(n):
            weight = math.factorial(r) * math.factorial(n - r - 1) / math.factorial(n)
            for c in itertools.combinations(others, r):
                with_name = tuple(m for m in names if m in c or m == name)
                total += weight * (values[with_name] - values[c])
        phi[name] = total
    return phi


def flips(expert_logits: Logits) -> dict[str, torch.Tensor]:
    """Per expert, a (N,) bool: does dropping that expert change the prediction?"""
    names = list(expert_logits)
    pred = _total(expert_logits, names).argmax(1)
    return {n: _total(expert_logits, [m for m in names if m != n]).argmax(1) != pred
            for n in names if len(names) > 1}


def agreement(expert_logits: Logits) -> dict[tuple[str, str], float]:
    """For each pair of experts, the fraction of samples where alone they predict the same class."""
    pred = {n: z.argmax(1) for n, z in expert_logits.items()}
    return {(a, b): (pred[a] == pred[b]).float().mean().item()
            for a, b in itertools.combinations(pred, 2)}


def term_correlation(expert_logits: Logits, terms: Mapping[str, torch.Tensor],
                     pairs: Mapping[str, str]) -> dict[str, float]:
    """Pearson correlation between learned experts and the exact terms they should capture.

    Logits and log-probability terms are both defined up to a constant per sample, so each
    row is centred over the classes first. ``pairs`` maps expert name -> term name.
    """
    def centred(t: torch.Tensor) -> torch.Tensor:
        t = t.double().cpu()
        return (t - t.mean(1, keepdim=True)).flatten()

    out = {}
    for expert, term in pairs.items():
        a, b = centred(expert_logits[expert]), centred(terms[term])
        out[expert] = torch.corrcoef(torch.stack([a, b]))[0, 1].item()
    return out


def summary(expert_logits: Logits, targets: torch.Tensor) -> list[dict[str, float | str]]:
    """One row per expert: accuracy alone, mean margin share, mean Shapley value for the true
    class, how often it decides, how often dropping it flips the prediction."""
    names = list(expert_logits)
    shares = margin_contributions(expert_logits)
    phi = shapley_values(expert_logits, targets)
    flipped = flips(expert_logits)
    decides = deciding_expert(expert_logits)
    return [{
        "expert": n,
        "accuracy_alone": (expert_logits[n].argmax(1) == targets).float().mean().item(),
        "mean_margin_share": shares[n].mean().item(),
        "mean_shapley_true_class": phi[n].mean().item(),
        "decides": sum(d == n for d in decides) / len(decides),
        "flip_rate_if_dropped": flipped[n].float().mean().item() if n in flipped else 0.0,
    } for n in names]
