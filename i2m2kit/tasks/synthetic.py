"""The simulator as a task: data from a SelectionModel and MLP experts for it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..blocks import Concat, LateFusion, mlp
from ..data import TensorData
from ..experts import I2M2, Expert
from ..protocol import Recipe, defined_metric
from ..simulate import SelectionBatch, SelectionModel


def load(path: str | Path | None = None, *, n_train: int = 2000, n_valid: int = 1000, n_test: int = 2000,
         **simulator: Any) -> dict[str, TensorData]:
    """``{"train", "valid", "test"}`` sampled, in that order, from ``SelectionModel(**simulator)``
    (the data are simulated: ``path`` is unused and may be None)."""
    sim = SelectionModel(**simulator)
    return {name: dataset(sim.sample(n)) for name, n in (("train", n_train), ("valid", n_valid), ("test", n_test))}


def build_model(dims: Sequence[int] = (16, 16), n_classes: int = 2, hidden: int = 64) -> I2M2:
    """I2M2 with an MLP expert per modality (two hidden layers of ``hidden``) and an MLP joint
    expert on the concatenation of both (twice as wide)."""
    return I2M2({
        "x": Expert(mlp(dims[0], hidden, n_classes, depth=2), reads="x"),
        "x2": Expert(mlp(dims[1], hidden, n_classes, depth=2), reads="x2"),
        "joint": Expert(LateFusion({"x": nn.Identity(), "x2": nn.Identity()}, Concat(dims),
                                   mlp(sum(dims), 2 * hidden, n_classes, depth=2)), reads=("x", "x2")),
    })


def recipe(epochs: int | None = None, regime: str = "joint", patience: int | None = 4) -> Recipe:
    """``fit`` arguments of notebook 00: 15 epochs by default, early stopping on validation
    accuracy after ``patience`` epochs without progress, batch 128."""
    return Recipe(epochs=15 if epochs is None else epochs, regime=regime, patience=patience, monitor="accuracy",
                  batch_size=128)


def selection_metric(data: dict[str, TensorData], preferred: str | None = None) -> str:
    """``preferred`` (default: the recipe's monitor, accuracy) when it is defined on the
    validation split, else ``"loss"``."""
    valid = data["valid"]
    n_classes = int(valid.targets.max()) + 1 if len(valid) else 2
    return defined_metric(valid, "categorical", n_classes, preferred or recipe().monitor)


def dataset(batch: SelectionBatch) -> TensorData:
    """A simulator sample as training data: inputs {"x", "x2"}, targets y."""
    return TensorData({k: v.cpu() for k, v in batch.inputs.items()}, batch.y.cpu())


class ExactTerm(nn.Module):
    """One term of a SelectionModel's exact posterior as an expert's network (no parameters)."""

    def __init__(self, sim: SelectionModel, term: str):
        super().__init__()
        self.sim, self.term = sim, term

    def forward(self, *modalities: torch.Tensor) -> torch.Tensor:
        device = modalities[0].device
        moved = [m.to(self.sim.device) for m in modalities]
        if self.term == "selection":
            return self.sim.selection_term(*moved).to(device)
        return self.sim.uni_log_posterior(moved[0], ("x", "x2").index(self.term)).to(device)


def bayes_model(sim: SelectionModel) -> I2M2:
    """The exact posterior as a product of experts, named like ``build_model``'s: "x" gives
    log p(y|x), "x2" log p(y|x'), "joint" the selection term. Its baselines are the exact answers
    of each kind of model (with a uniform prior: the intra model is naive Bayes), so every
    diagnostic run on it gives that diagnostic's true value."""
    return I2M2({
        "x": Expert(ExactTerm(sim, "x"), reads="x"),
        "x2": Expert(ExactTerm(sim, "x2"), reads="x2"),
        "joint": Expert(ExactTerm(sim, "selection"), reads=("x", "x2")),
    })


def expected_verdict(sim: SelectionModel) -> str:
    """The dependency the simulator holds, as ``diagnostics.verdict`` should name it."""
    intra, inter = any(s > 0 for s in sim.intra), sim.inter > 0
    return {(True, True): "both", (True, False): "intra-dominated", (False, True): "inter-dominated"}.get(
        (intra, inter), "undetermined")
