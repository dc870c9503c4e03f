"""Inference: where a model runs, what it says about a data set, and the metrics of that.

``predict`` gives every expert's logits and their sum; ``evaluate`` the loss and the metrics
of the model's likelihood, from probabilities, the same way for every model.
"""

from __future__ import annotations

import itertools

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from . import distributed
from .data import check_not_empty, local_part, make_loader, to_device
from .experts import I2M2, MissingModalityError
from .likelihoods import Likelihood


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"``: the GPU when torch sees one, else the CPU. A device this machine does not
    have is refused here, in one line, rather than at the first tensor moved to it."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device={device!r} is not a device name ({e}); use 'auto', 'cpu' or 'cuda'") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r}: torch sees no CUDA GPU on this machine"
                         f" (torch {torch.__version__}); use 'auto' or 'cpu'")
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise ValueError(f"device={device!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={device!r}: Apple's MPS is not available on this machine; use 'auto' or 'cpu'")
    return resolved


def autocast(device: torch.device, amp: bool | torch.dtype):
    """``amp=True``: mixed precision on CUDA only, bfloat16 where supported (no loss scaling
    needed); a dtype: autocast to it on any device (to measure it); False: none."""
    if isinstance(amp, torch.dtype):
        return torch.autocast(device.type, dtype=amp)
    enabled = amp and device.type == "cuda"
    dtype = torch.bfloat16 if enabled and torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device.type, dtype=dtype, enabled=enabled)


@dataclass
class Predictions:
    """Everything a model said about a dataset, on the CPU."""

    logits: torch.Tensor
    expert_logits: dict[str, torch.Tensor]
    targets: torch.Tensor
    likelihood: Likelihood

    @property
    def probs(self) -> torch.Tensor:
        # float64 so that each row sums to one to within rounding
        return self.likelihood.log_probs(self.logits.double()).exp()


@torch.no_grad()
def predict(model: I2M2, data, batch_size: int = 512, device: str | torch.device = "auto",
            amp: bool = True, progress: bool = False, *, name: str = "data", strict: bool = False) -> Predictions:
    """The model's logits for ``data`` (under torchrun: each rank predicts a block and every
    rank gets the whole, in order; call it on every rank).

    ``name`` names the data in errors (an empty set); with ``strict`` every expert must run:
    data lacking a modality an expert reads are refused instead of scoring a smaller model."""
    check_not_empty(data, name)
    device = distributed.device_for_rank(resolve_device(device))
    was_training = model.training
    elsewhere = (t.device.type != device.type or device.index not in (None, t.device.index)
                 for t in itertools.chain(model.parameters(), model.buffers()))
    if any(elsewhere):
        model.to(device)  # fit's validations find it there already: nothing moves
    model.eval()
    logits, experts, targets = [], {}, []
    local = data if isinstance(data, DataLoader) else local_part(data)
    for inputs, target in tqdm(make_loader(local, batch_size, shard=False), desc="predict", leave=False,
                               disable=not progress or not distributed.is_main()):
        with autocast(device, amp):
            try:
                out = model(to_device(inputs, device), strict=strict)
            except MissingModalityError as e:
                raise MissingModalityError(f"{name} set: {e}") from None
        logits.append(out.logits.float().cpu())
        for expert, z in out.expert_logits.items():
            experts.setdefault(expert, []).append(z.float().cpu())
        targets.append(target.cpu())
    model.train(was_training)
    if not logits and not distributed.active():  # an iterable data set that gave nothing
        raise ValueError(f"{name} holds no examples (its loader gave no batch)")
    pieces = (torch.cat(logits), {n: torch.cat(z) for n, z in experts.items()}, torch.cat(targets))
    if distributed.active() and not isinstance(data, DataLoader):
        parts = distributed.gather(pieces)
        pieces = (torch.cat([p[0] for p in parts]), {n: torch.cat([p[1][n] for p in parts]) for n in pieces[1]},
                  torch.cat([p[2] for p in parts]))
    return Predictions(*pieces, model.likelihood)


def evaluate(model: I2M2, data, batch_size: int = 512, device: str | torch.device = "auto",
             loss_weight: torch.Tensor | None = None, amp: bool = True, *, name: str = "data",
             strict: bool = False) -> dict[str, float]:
    """The loss and every metric of the model's likelihood, from probabilities (``name`` and
    ``strict`` as in ``predict``)."""
    p = predict(model, data, batch_size, device, amp, name=name, strict=strict)
    weight = None if loss_weight is None else loss_weight.cpu()
    metrics = {"loss": float(model.loss(p.logits, p.targets, weight))}
    metrics.update(model.likelihood.metrics(p.probs.numpy(), p.targets.numpy()))
    return metrics
