"""The output family of a product of experts: how summed logits become a distribution.

Each expert gives logits of the same shape; the product of the experts' distributions,
renormalised, is the family's distribution of the summed logits. One small class per family
owns everything that follows from it: log-probabilities, the one loss every model built from
an I2M2 gets on its own summed logits, the check of the targets, the prediction and the
metrics.

* ``Categorical()``: K mutually exclusive classes (AV-MNIST, MIMIC-III, PhysioNet, NLVR).
  The product of the experts' softmax distributions is ``softmax(sum of logits)``.
* ``Bernoulli()``: L independent binary labels (fastMRI's four findings). Experts give
  log-odds; the product for each label is ``sigmoid(sum of log-odds)``.
* ``SoftScores()``: a soft score in [0, 1] per candidate answer (VQA: how many annotators
  gave it). Each answer is a Bernoulli whose experts multiply, trained against the scores;
  the model answers with its most probable answer, scored by the VQA score of that answer.

The strings ``"categorical"``, ``"bernoulli"`` and ``"soft_scores"`` (and the older names
``"multiclass"``, ``"multilabel"``, ``"answers"``) are shorthands for them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from .metrics import multiclass_metrics, multilabel_metrics, vqa_score


def describe(x) -> str:
    """Shape and dtype of an input (tensors, or tuples of them), for error messages."""
    if isinstance(x, torch.Tensor):
        return f"{tuple(x.shape)} {str(x.dtype).removeprefix('torch.')}"
    if isinstance(x, tuple):
        return "(" + ", ".join(map(describe, x)) + ")"
    return type(x).__name__


@dataclass(frozen=True)
class Likelihood:
    """What every output family answers; the subclasses fill it in."""

    name = "likelihood"
    default_metric = "loss"  # what the diagnostics score by default

    def log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def metrics(self, probs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        """Every metric that fits the family and its targets, from probabilities."""
        raise NotImplementedError

    def predicted(self, logits: torch.Tensor) -> torch.Tensor:
        """What the model says: the most probable class or answer (each label's call, for Bernoulli)."""
        return logits.argmax(-1)

    def labels(self, targets: torch.Tensor) -> torch.Tensor:
        """One discrete label per example, (N,) long (for stratifying): the best one."""
        return targets.long() if targets.ndim == 1 else targets.argmax(1)

    def prior_logits(self, targets: torch.Tensor) -> torch.Tensor:
        """(K,) logits of the best constant prediction: each label's rate, as log-odds."""
        rate = targets.double().mean(0).clamp(1e-6, 1 - 1e-6)
        return (rate / (1 - rate)).log()

    def per_example(self, logits: torch.Tensor, targets: torch.Tensor, metric: str) -> torch.Tensor | None:
        """The metric's value per example where it is a mean over examples, else None."""
        return None

    def score(self, logits: torch.Tensor, targets: torch.Tensor, metric: str) -> float:
        """One metric of logits against targets, from probabilities, as ``evaluate`` scores
        (the subclasses score their own metric directly: the diagnostics score many re-pairings)."""
        metrics = self.metrics(self.log_probs(logits.double()).exp().numpy(), targets.numpy())
        if metric not in metrics:
            raise KeyError(f"metric={metric!r} is not defined here; choose one of {sorted(metrics)}")
        return metrics[metric]

    def _same_shape(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        if target.shape != logits.shape:
            raise ValueError(f"{self.name} targets must have the logits' shape {tuple(logits.shape)}, "
                             f"got {describe(target)}")


@dataclass(frozen=True)
class Categorical(Likelihood):
    name = "categorical"
    default_metric = "accuracy"

    def log_probs(self, logits):
        return F.log_softmax(logits, dim=-1)

    def loss(self, logits, target, weight=None):
        """Cross-entropy; ``target`` holds class indices (B,) or probabilities (B, K);
        ``weight`` is a per-class weight."""
        return F.cross_entropy(logits, self.check_targets(logits, target, weight), weight=weight)

    def check_targets(self, logits, target, weight=None):
        k = logits.shape[-1]
        if target.shape == logits.shape[:1] and not target.is_floating_point():
            # torch says "out of bounds"; on a GPU (not checked here: a host sync every step) a device assert
            outside = target[(target < 0) | (target >= k)] if target.device.type == "cpu" else ()
            if len(outside):
                raise ValueError(f"target class {int(outside[0])} is outside 0..{k - 1}: the model has {k} classes")
            if target.dtype == torch.bool:  # torch would read it as bytes, or refuse it obscurely
                raise ValueError(f"categorical targets must be class indices, got {describe(target)}; "
                                 f"pass target.long()")
            target = target.long()  # int32 or uint8 class indices: the same classes
        elif target.shape != logits.shape or not target.is_floating_point():
            raise ValueError(f"categorical targets must be class indices (integers, shape {tuple(logits.shape[:1])}) "
                             f"or probabilities (floats, shape {tuple(logits.shape)}); got {describe(target)}")
        if weight is not None and weight.shape != (k,):  # else torch's error at the first step
            raise ValueError(f"loss_weight must hold one weight per class ({k}), got shape {tuple(weight.shape)}")
        return target

    def metrics(self, probs, targets):
        """Accuracy, balanced accuracy, AUROC, AUPRC, NLL, ECE; soft class targets are scored
        against their most probable class."""
        probs, targets = _finite(probs), np.asarray(targets)
        return multiclass_metrics(probs, targets.argmax(axis=1) if targets.ndim == 2 else targets)

    def prior_logits(self, targets):
        rate = torch.bincount(targets).double() / len(targets) if targets.ndim == 1 else targets.double().mean(0)
        return rate.clamp(1e-6, 1 - 1e-6).log()

    def per_example(self, logits, targets, metric):
        return (logits.argmax(1) == self.labels(targets)).double() if metric == "accuracy" else None

    def score(self, logits, targets, metric):
        if metric == "accuracy":
            return float(self.per_example(logits, targets, metric).mean())
        return super().score(logits, targets, metric)


@dataclass(frozen=True)
class Bernoulli(Likelihood):
    name = "bernoulli"
    default_metric = "auroc"

    def log_probs(self, logits):
        return F.logsigmoid(logits)  # of each label being positive

    def loss(self, logits, target, weight=None):
        """Binary cross-entropy on the logits; ``target`` (B, L) holds 0/1 labels;
        ``weight`` is a per-label positive-class weight."""
        self._same_shape(logits, target)
        return F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), pos_weight=weight)

    def metrics(self, probs, targets):
        """Per-label and mean AUROC, AUPRC, balanced accuracy, sensitivity, specificity."""
        probs, targets = _finite(probs), np.asarray(targets)
        if not np.isin(targets, (0, 1)).all():
            raise ValueError("bernoulli targets must be 0 or 1; soft answer scores take likelihood='soft_scores'")
        return multilabel_metrics(probs, targets)

    def predicted(self, logits):
        return (logits > 0).long()

    def labels(self, targets):
        """The combination of labels each example has."""
        return targets.long() if targets.ndim == 1 else torch.unique(targets.long(), dim=0, return_inverse=True)[1]

    def score(self, logits, targets, metric):
        if metric != "auroc":
            return super().score(logits, targets, metric)
        # the mean over the labels where it is defined, as evaluate's; from logits, rank for rank
        y, z = targets.numpy().astype(int), logits.double().numpy()
        defined = [j for j in range(y.shape[1]) if y[:, j].min() != y[:, j].max()]
        if not defined:
            raise KeyError("metric='auroc' is not defined here: every label has one class only")
        return float(np.mean([roc_auc_score(y[:, j], z[:, j]) for j in defined]))


@dataclass(frozen=True)
class SoftScores(Likelihood):
    name = "soft_scores"
    default_metric = "vqa_score"

    def log_probs(self, logits):
        return F.logsigmoid(logits)

    def loss(self, logits, target, weight=None):
        """Binary cross-entropy against the scores, summed over answers and averaged over
        examples (a mean over thousands of answers, nearly all scoring 0, would shrink the
        gradient by their number)."""
        self._same_shape(logits, target)
        return F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), pos_weight=weight) * logits.shape[-1]

    def metrics(self, probs, targets):
        """The VQA score of the most probable answer."""
        return {"vqa_score": vqa_score(_finite(probs), targets)}

    def per_example(self, logits, targets, metric):
        return targets.double()[torch.arange(len(logits)), logits.argmax(1)] if metric == "vqa_score" else None

    def score(self, logits, targets, metric):
        if metric == "vqa_score":
            return vqa_score(logits.numpy(), targets.numpy())
        return super().score(logits, targets, metric)


SHORTHANDS = {"categorical": Categorical, "bernoulli": Bernoulli, "soft_scores": SoftScores,
              "multiclass": Categorical, "multilabel": Bernoulli, "answers": SoftScores}


def as_likelihood(likelihood: Likelihood | str) -> Likelihood:
    """A likelihood object, from itself or its shorthand."""
    if isinstance(likelihood, Likelihood):
        return likelihood
    if isinstance(likelihood, str) and likelihood in SHORTHANDS:
        return SHORTHANDS[likelihood]()
    raise ValueError(f"likelihood must be ik.Categorical(), ik.Bernoulli(), ik.SoftScores() or one of the "
                     f"shorthands {list(SHORTHANDS)}, got {likelihood!r}")


def evaluate_probs(probs: np.ndarray, targets: np.ndarray, likelihood: Likelihood | str) -> dict[str, float]:
    """The metrics that fit a likelihood and its targets (see each likelihood's ``metrics``)."""
    return as_likelihood(likelihood).metrics(probs, targets)


def _finite(probs) -> np.ndarray:
    probs = np.asarray(probs)
    if not np.isfinite(probs).all():
        raise FloatingPointError("model produced non-finite probabilities")
    return probs
