"""A weighted product of experts: one non-negative exponent per expert, fitted on validation.

    p(y | x) ~ prod_e p_e(y | x) ^ w_e,   logits = sum_e w_e z_e

The published I2M2 has every w_e = 1. With little data an expert that reads a wide, mostly
nuisance modality, or the joint expert on such inputs, overfits: its logits are confident
noise, and adding them drags the product below the uni-modal model of the good modality,
which I2M2 contains. Fitting w on validation lets the product keep each expert only as far
as it helps there (w_e = 0 drops it: every subset of the experts, hence every baseline, is
a point of the search), at the cost of one pass over the validation set. Weighing experts
trained alone (the uni-modal and inter models, which the paper's comparison trains anyway)
is the mend ``benchmarks/mends.py`` measures best.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .experts import I2M2
from .inference import predict


def weigh_experts(model: I2M2, valid, device: str | torch.device = "auto", batch_size: int = 512,
                  max_iter: int = 200) -> dict[str, float]:
    """Fit each expert's weight (its exponent in the product) to minimise the model's loss on
    ``valid``, the experts' networks unchanged; set the weights in ``model`` and return them."""
    for expert in model.experts.values():
        expert.weight.fill_(1.0)
    p = predict(model, valid, batch_size, device, name="valid", strict=True)
    names = list(p.expert_logits)
    z = torch.stack([p.expert_logits[n].double() for n in names])  # (experts, N, outputs)
    start = float(torch.log(torch.expm1(torch.tensor(1.0))))  # softplus(start) = 1: the published product
    raw = torch.full((len(names),), start, dtype=torch.double, requires_grad=True)
    opt = torch.optim.LBFGS([raw], max_iter=max_iter, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        opt.zero_grad()
        w = F.softplus(raw)  # non-negative: an expert may be dropped, never turned against itself
        value = model.loss((w[:, None, None] * z).sum(0), p.targets)
        value.backward()
        return value

    opt.step(loss)
    weights = F.softplus(raw).detach()
    for name, w in zip(names, weights):
        model.experts[name].weight.fill_(float(w))
    return {name: float(w) for name, w in zip(names, weights)}


def weighted_from_experts(build_model, alone: dict[str, I2M2], valid, **kwargs: Any) -> tuple[I2M2, dict[str, float]]:
    """A fresh I2M2 from ``build_model`` whose experts are those trained alone (``alone``: each
    expert's name -> the trained model that holds it, e.g. the uni-modal and inter models),
    weighed on ``valid``."""
    model = build_model()
    for name, expert in model.experts.items():
        expert.load_state_dict(alone[name].experts[name].state_dict())
    return model, weigh_experts(model, valid, **kwargs)
