"""The simulator as a task: data from a SelectionModel and MLP experts for it."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..experts import I2M2, Expert
from ..simulate import SelectionBatch, SelectionModel
from ..data import TensorData


def mlp(d_in: int, d_out: int, hidden: int = 64, depth: int = 2) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(d_in if i == 0 else hidden, hidden), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(hidden if depth else d_in, d_out))


class Concat(nn.Module):
    """Early fusion: concatenate the modalities, then one network (the joint expert)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, *modalities: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat(modalities, dim=-1))


def build_model(dims: Sequence[int], n_classes: int, hidden: int = 64) -> I2M2:
    """I2M2 with an MLP expert per modality and an MLP joint expert on both."""
    return I2M2({
        "x": Expert(mlp(dims[0], n_classes, hidden), reads="x"),
        "x2": Expert(mlp(dims[1], n_classes, hidden), reads="x2"),
        "joint": Expert(Concat(mlp(sum(dims), n_classes, 2 * hidden)), reads=("x", "x2")),
    })


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
