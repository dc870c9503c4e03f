"""Metrics from probabilities, checked against their definitions."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import i2m2kit as ik
from i2m2kit.metrics import multilabel_metrics


def test_multiclass_metrics_come_from_probabilities():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 500)
    logits = rng.normal(size=(500, 3)) + 2 * np.eye(3)[y]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    m = ik.evaluate_probs(probs, y, "multiclass")
    assert m["accuracy"] == pytest.approx((probs.argmax(1) == y).mean())
    assert m["nll"] == pytest.approx(-np.log(probs[np.arange(500), y]).mean())
    # AUROC is invariant to any monotone map of the scores: logits and probabilities agree only
    # for a binary task; the metric must use probabilities for every model alike
    assert m["auroc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr"))
    assert 0.5 < m["auroc"] <= 1 and 0 < m["auprc"] <= 1


def test_ece_is_zero_for_calibrated_confidences_and_large_for_overconfident_ones():
    rng = np.random.default_rng(0)
    n = 200_000
    confidence = rng.uniform(0.5, 1.0, n)
    correct = rng.uniform(size=n) < confidence  # right with exactly the stated probability
    probs = np.stack([confidence, 1 - confidence], 1)
    y = np.where(correct, 0, 1)
    assert ik.expected_calibration_error(probs, y) < 0.005
    overconfident = np.stack([np.full(n, 0.99), np.full(n, 0.01)], 1)
    assert ik.expected_calibration_error(overconfident, y) == pytest.approx(0.99 - correct.mean(), abs=1e-9)


def test_vqa_score_is_the_soft_score_of_the_predicted_answer():
    scores = np.array([[1.0, 0.3, 0.0], [0.0, 0.6, 0.9]])
    probs = np.array([[0.2, 0.7, 0.1], [0.1, 0.1, 0.8]])
    assert ik.vqa_score(probs, scores) == pytest.approx((0.3 + 0.9) / 2)
    assert ik.evaluate_probs(probs, scores, "answers") == {"vqa_score": pytest.approx(0.6)}
    # one answer per question (easy-VQA): still the VQA score, which is then the accuracy
    one_hot = np.eye(3)[[1, 2]]
    assert ik.evaluate_probs(probs, one_hot, "answers") == {"vqa_score": 1.0}
    with pytest.raises(ValueError, match="likelihood='soft_scores'"):
        ik.evaluate_probs(probs, scores, "multilabel")


def test_multilabel_metrics_per_label_and_undefined_ones_left_out():
    y = np.array([[1, 0], [0, 0], [1, 0], [0, 0]])
    probs = np.array([[0.9, 0.2], [0.2, 0.1], [0.4, 0.7], [0.6, 0.3]])
    m = multilabel_metrics(probs, y)
    assert m["auroc/0"] == pytest.approx(roc_auc_score(y[:, 0], probs[:, 0]))
    assert "auroc/1" not in m  # label 1 has no positives: undefined, not NaN
    assert m["sensitivity/0"] == 0.5 and m["specificity/0"] == 0.5
    assert all(np.isfinite(v) for v in m.values())


def test_non_finite_probabilities_are_an_error():
    with pytest.raises(FloatingPointError):
        ik.evaluate_probs(np.array([[np.nan, 1.0]]), np.array([0]), "multiclass")
