"""i2m2kit: Inter- and Intra-Modality Modeling (I2M2, NeurIPS 2024).

A multi-modal classifier as a product of experts: one expert per modality (intra-modality
dependencies) and a joint expert (inter-modality dependencies), their logits summed.
"""

from .data import TensorData
from .diagnostics import DependencyReport, dependency_report
from .experts import I2M2, Expert, Output
from .inference import Predictions, evaluate, predict, resolve_device
from .likelihoods import Bernoulli, Categorical, Likelihood, SoftScores, evaluate_probs
from .metrics import expected_calibration_error, vqa_score
from .protocol import (Recipe, compare_across_seeds, compare_models, evaluate_missing, evaluate_noised,
                       missing_modality_rows, noised_rows)
from .simulate import SelectionBatch, SelectionModel
from .train import REGIMES, FitResult, fit, train_step
from .weights import weigh_experts

__version__ = "0.1.0"

__all__ = [
    "TensorData", "DependencyReport", "dependency_report", "I2M2", "Expert", "Output", "Predictions", "evaluate",
    "predict", "resolve_device", "Bernoulli", "Categorical", "Likelihood", "SoftScores", "evaluate_probs",
    "expected_calibration_error", "vqa_score", "Recipe", "compare_across_seeds", "compare_models", "evaluate_missing",
    "evaluate_noised", "missing_modality_rows", "noised_rows", "SelectionBatch", "SelectionModel", "REGIMES", "FitResult", "fit", "train_step", "weigh_experts",
]
