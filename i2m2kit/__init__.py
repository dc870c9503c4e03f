"""i2m2kit: Inter- and Intra-Modality Modeling (I2M2, NeurIPS 2024).

A multi-modal classifier as a product of experts: one expert per modality (intra-modality
dependencies) and a joint expert (inter-modality dependencies), their logits summed.
"""

from .diagnostics import DependencyReport, dependency_report
from .experts import HEADS, I2M2, Expert, Output
from .metrics import evaluate_probs, expected_calibration_error, vqa_score
from .simulate import SelectionBatch, SelectionModel
from .train import (REGIMES, FitResult, Predictions, TensorData, compare_across_seeds, compare_models,
                    evaluate, evaluate_missing, evaluate_noised, fit, predict, resolve_device)
from .weights import weigh_experts

__version__ = "0.1.0"

__all__ = [
    "DependencyReport", "dependency_report", "HEADS", "I2M2", "Expert", "Output", "evaluate_probs", "expected_calibration_error",
    "vqa_score", "SelectionBatch", "SelectionModel", "REGIMES", "FitResult", "Predictions",
    "TensorData", "compare_across_seeds", "compare_models", "evaluate", "evaluate_missing", "evaluate_noised", "fit",
    "predict", "resolve_device", "weigh_experts",
]
