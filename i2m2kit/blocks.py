"""The building blocks the benchmarks' experts share: one MLP, one concatenation, and the
late-fusion network of a joint expert (an encoder per modality, a join, a head), keyed by
modality as TorchMultimodal's ``LateFusion(encoders, fusion, head)`` is.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
from torch import nn


def mlp(d_in: int, hidden: int, d_out: int, depth: int = 1, activation: Callable[[], nn.Module] = nn.ReLU,
        dropout: float = 0.0) -> nn.Sequential:
    """``depth`` hidden layers of width ``hidden`` (linear, activation, then dropout when
    ``dropout`` > 0), then a linear layer to ``d_out``; ``depth=0`` is one linear layer."""
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(d_in if i == 0 else hidden, hidden), activation()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers, nn.Linear(hidden if depth else d_in, d_out))


class Concat(nn.Module):
    """Fusion by concatenation of the encoders' features (of widths ``dims``, when known)."""

    def __init__(self, dims: Sequence[int] = ()):
        super().__init__()
        self.out_features = sum(dims)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat(list(features), dim=-1)


class LateFusion(nn.Module):
    """A joint expert's network: ``head(fusion([encoder(x) for each modality]))``.

    ``encoders`` maps each modality to its encoder, in the order the expert reads them (the
    network is called with the modalities positionally, as ``Expert`` calls it).
    """

    def __init__(self, encoders: Mapping[str, nn.Module], fusion: nn.Module | None = None, head: nn.Module | None = None):
        super().__init__()
        self.encoders = nn.ModuleDict(dict(encoders))
        self.fusion = fusion if fusion is not None else Concat()
        self.head = head if head is not None else nn.Identity()

    def forward(self, *modalities: torch.Tensor) -> torch.Tensor:
        if len(modalities) != len(self.encoders):
            raise TypeError(f"LateFusion has encoders for {list(self.encoders)}, called with {len(modalities)} inputs")
        return self.head(self.fusion([encoder(x) for encoder, x in zip(self.encoders.values(), modalities)]))
