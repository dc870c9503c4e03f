"""Metrics, all computed from probabilities and the same way for every model.

Thin wrappers over scikit-learn. (The published code scored single models from raw logits
and I2M2 from log-probabilities; here every model is scored from its probabilities.)
A metric that is undefined on the data at hand (AUROC when a label has one class only) is
left out of the result rather than reported as NaN.
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, n_bins: int = 15) -> float:
    """ECE of the top-class confidence over equal-width bins (Guo et al., 2017)."""
    probs = np.asarray(probs, dtype=np.float64)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(y)
    bins = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
    ece = 0.0
    for b in np.unique(bins):
        in_bin = bins == b
        ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def vqa_score(probs: np.ndarray, scores: np.ndarray) -> float:
    """VQA accuracy: the soft score of the answer each row predicts, averaged."""
    pred = np.asarray(probs).argmax(axis=1)
    return float(np.asarray(scores)[np.arange(len(pred)), pred].mean())


def multiclass_metrics(probs: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """probs (N, K) rows summing to one; y (N,) class indices."""
    probs, y = np.asarray(probs, dtype=np.float64), np.asarray(y)
    n_classes = probs.shape[1]
    pred = probs.argmax(axis=1)
    out = {
        "accuracy": skm.accuracy_score(y, pred),
        "balanced_accuracy": skm.balanced_accuracy_score(y, pred),
        "nll": skm.log_loss(y, np.clip(probs, 1e-12, 1.0), labels=np.arange(n_classes)),
        "ece": expected_calibration_error(probs, y),
    }
    present = np.unique(y)
    if n_classes == 2 and len(present) == 2:
        out["auroc"] = skm.roc_auc_score(y, probs[:, 1])
        out["auprc"] = skm.average_precision_score(y, probs[:, 1])
    elif n_classes > 2 and len(present) == n_classes:
        out["auroc"] = skm.roc_auc_score(y, probs, multi_class="ovr", average="macro")
        out["auprc"] = skm.average_precision_score(np.eye(n_classes)[y], probs, average="macro")
    return {k: float(v) for k, v in out.items()}


def multilabel_metrics(probs: np.ndarray, y: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """probs (N, L) probability of each label; y (N, L) 0/1 labels.

    Per-label values are reported as ``<metric>/<label index>`` and their mean over the
    labels where they are defined as ``<metric>``.
    """
    probs, y = np.asarray(probs, dtype=np.float64), np.asarray(y).astype(int)
    pred = (probs >= threshold).astype(int)
    per_label: dict[str, list[tuple[int, float]]] = {
        "accuracy": [], "balanced_accuracy": [], "sensitivity": [], "specificity": [],
        "auroc": [], "auprc": [],
    }
    for j in range(y.shape[1]):
        yj, pj, dj = y[:, j], probs[:, j], pred[:, j]
        per_label["accuracy"].append((j, skm.accuracy_score(yj, dj)))
        if yj.min() == yj.max():
            continue  # one class only: the rest is undefined for this label
        per_label["balanced_accuracy"].append((j, skm.balanced_accuracy_score(yj, dj)))
        per_label["sensitivity"].append((j, skm.recall_score(yj, dj, pos_label=1)))
        per_label["specificity"].append((j, skm.recall_score(yj, dj, pos_label=0)))
        per_label["auroc"].append((j, skm.roc_auc_score(yj, pj)))
        per_label["auprc"].append((j, skm.average_precision_score(yj, pj)))
    out: dict[str, float] = {"exact_match": float((pred == y).all(axis=1).mean())}
    for name, values in per_label.items():
        if values:
            out[name] = float(np.mean([v for _, v in values]))
            out.update({f"{name}/{j}": float(v) for j, v in values})
    return out


def event1_threshold(scores: np.ndarray, y: np.ndarray) -> float:
    """The threshold on ``scores`` (higher: more likely positive) that maximises the
    PhysioNet/CinC 2012 event-1 score, min(sensitivity, positive predictive value), on (y, scores)."""
    y = np.asarray(y).astype(int)
    if len(np.unique(y)) < 2:  # no threshold is then better than another
        raise ValueError(f"the event-1 threshold needs positives and negatives; the {len(y)} labels given "
                         f"are {np.unique(y).tolist()}")
    precision, recall, thresholds = skm.precision_recall_curve(y, np.asarray(scores, dtype=np.float64))
    return float(thresholds[np.argmax(np.minimum(precision, recall)[:-1])])


def threshold_metrics(scores: np.ndarray, y: np.ndarray, threshold: float) -> dict[str, float]:
    """Binary metrics of ``scores >= threshold`` against 0/1 ``y``: the challenge's event-1
    score (min of sensitivity and PPV), balanced accuracy, sensitivity, PPV; and the
    threshold-free AUROC and AUPRC of the scores."""
    y, scores = np.asarray(y).astype(int), np.asarray(scores, dtype=np.float64)
    pred = (scores >= threshold).astype(int)
    sensitivity = skm.recall_score(y, pred, zero_division=0)
    ppv = skm.precision_score(y, pred, zero_division=0)
    out = {"event1": float(min(sensitivity, ppv)), "balanced_accuracy": float(skm.balanced_accuracy_score(y, pred)),
           "sensitivity": float(sensitivity), "ppv": float(ppv)}
    if y.min() != y.max():  # one class only: the rankings are undefined and left out
        out.update(auroc=float(skm.roc_auc_score(y, scores)), auprc=float(skm.average_precision_score(y, scores)))
    return out
