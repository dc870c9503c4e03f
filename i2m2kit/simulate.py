"""The selection-variable model of I2M2, simulated, with its exact Bayes posterior.

The graphical model: y -> x, y -> x', and a binary selection variable v on (x, x', y) that is
always observed as v = 1. Here

    y ~ Categorical(prior)                              K classes
    x | y ~ N(mu_y, I),  x' | y ~ N(mu'_y, I)           intra-modality signal: |mu_y - mu_y'| = intra
    p(v=1 | x, x', y) = sigmoid(inter * s_y(x, x') + bias)
    keep the samples with v = 1                         (vectorised rejection sampling)

The class means live in the first K coordinates of each modality. The interaction s_y is a
bilinear form on the remaining coordinates, which carry no class information on their own:
s_y(x, x') = x_r^T Q_y x'_r / sqrt(m), with Q_y an orthogonal m x m matrix per class
(Q_1 = -Q_0 for two classes: the label sign times a product of projections). Because Q_y is
orthogonal and x_r, x'_r are standard normal whatever y is, integrating out either modality
leaves a selection probability that does not depend on y: each modality alone says nothing
about y through the selection. The label is then visible only in how the two modalities
relate: inter-modality signal.

Every factor is known, so the posterior is exact:

    log p(y | x, x', v=1) = log p(y|x) + log p(y|x') + [log p(v=1 | x, x', y) - log p(y)] + c(x, x')
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

MODALITIES = ("x", "x2")


@dataclass
class SelectionBatch:
    inputs: dict[str, torch.Tensor]  # {"x": (N, d), "x2": (N, d')}
    y: torch.Tensor  # (N,) class indices
    acceptance: float  # fraction of the drawn samples that had v = 1


class SelectionModel:
    """Sampler and exact posterior of the selection-variable model.

    Args:
        n_classes: K.
        dims: dimension of each modality; each must exceed K (the extra coordinates carry
            the interaction).
        intra: per modality, the distance between class means (0: the modality alone says
            nothing about y).
        inter: strength of the selection's dependence on the interaction (0: no
            inter-modality signal, the posterior is naive Bayes).
        interaction: the form of s_y; ``"bilinear"``.
        bias: selection logit offset; sets the acceptance rate.
        prior: class probabilities (default uniform).
        seed: fixes the parameters (class means, interaction matrices) and the sample stream.
    """

    def __init__(
        self,
        n_classes: int = 2,
        dims: Sequence[int] = (16, 16),
        intra: Sequence[float] = (1.0, 1.0),
        inter: float = 2.0,
        interaction: str = "bilinear",
        bias: float = 0.0,
        prior: Sequence[float] | None = None,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ):
        if n_classes < 2:
            raise ValueError(f"n_classes must be at least 2, got {n_classes}")
        if len(dims) != 2 or len(intra) != 2:
            raise ValueError(f"dims and intra need one value per modality (2), got {dims!r} and {intra!r}")
        if min(dims) <= n_classes:
            raise ValueError(f"dims must each exceed n_classes={n_classes} (room for the interaction), got {tuple(dims)}")
        if interaction != "bilinear":
            raise ValueError(f"interaction must be 'bilinear', got {interaction!r}")
        if any(s < 0 for s in intra) or inter < 0:
            raise ValueError(f"intra and inter strengths must be non-negative, got intra={intra}, inter={inter}")
        self.n_classes, self.dims = n_classes, tuple(int(d) for d in dims)
        self.intra, self.inter, self.bias = tuple(float(s) for s in intra), float(inter), float(bias)
        self.interaction, self.seed = interaction, seed
        self.device = torch.device(device)
        prior_t = torch.full((n_classes,), 1.0 / n_classes) if prior is None else torch.as_tensor(prior, dtype=torch.float32)
        if prior_t.shape != (n_classes,) or (prior_t <= 0).any() or abs(float(prior_t.sum()) - 1) > 1e-6:
            raise ValueError(f"prior must be {n_classes} positive probabilities summing to 1, got {prior!r}")
        self.log_prior = prior_t.log().to(self.device)

        g = torch.Generator().manual_seed(seed)
        eye = torch.eye(n_classes)
        # class means in the first K coordinates, pairwise distance = intra strength
        self.means = [(s / math.sqrt(2) * eye).to(self.device) for s in self.intra]
        self.m = min(self.dims) - n_classes  # interaction coordinates used in each modality
        q = torch.linalg.qr(torch.randn(n_classes, self.m, self.m, generator=g)).Q
        if n_classes == 2:
            q[1] = -q[0]
        self.q = q.to(self.device)
        self.generator = torch.Generator(self.device).manual_seed(seed + 1)

    # ------------------------------------------------------------------ the three terms

    def _split(self, inputs: Mapping[str, torch.Tensor]):
        missing = [m for m in MODALITIES if m not in inputs]
        if missing:
            raise KeyError(f"SelectionModel inputs need {list(MODALITIES)}, missing {missing}")
        x, x2 = inputs["x"].to(self.device), inputs["x2"].to(self.device)
        for name, t, d in (("x", x, self.dims[0]), ("x2", x2, self.dims[1])):
            if t.ndim != 2 or t.shape[1] != d:
                raise ValueError(f"input {name!r} must have shape (N, {d}), got {tuple(t.shape)}")
        return x, x2

    def interaction_scores(self, x: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """s_y(x, x') for every class: (N, K)."""
        k, m = self.n_classes, self.m
        xr, x2r = x[:, k:k + m], x2[:, k:k + m]
        return torch.einsum("ni,yij,nj->ny", xr, self.q, x2r) / math.sqrt(m)

    def selection_logits(self, x: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """logit p(v=1 | x, x', y) for every class: (N, K)."""
        return self.inter * self.interaction_scores(x, x2) + self.bias

    def _uni_log_posterior(self, x: torch.Tensor, which: int) -> torch.Tensor:
        # log p(y | x) = log_softmax(log p(y) + log N(x; mu_y, I)); coordinates past K cancel
        sq = ((x[:, None, : self.n_classes] - self.means[which][None]) ** 2).sum(-1)
        return torch.log_softmax(self.log_prior - 0.5 * sq, dim=1)

    def terms(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The three experts' exact targets, each (N, K), up to a constant per sample:
        ``x``: log p(y|x); ``x2``: log p(y|x'); ``selection``: log p(v=1|x,x',y) - log p(y)."""
        x, x2 = self._split(inputs)
        return {
            "x": self._uni_log_posterior(x, 0),
            "x2": self._uni_log_posterior(x2, 1),
            "selection": F.logsigmoid(self.selection_logits(x, x2)) - self.log_prior,
        }

    def log_posterior(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Exact log p(y | x, x', v=1): (N, K)."""
        return torch.log_softmax(sum(self.terms(inputs).values()), dim=1)

    def bayes_accuracy(self, batch: SelectionBatch) -> float:
        """Accuracy of the exact posterior on a batch: the limit no classifier beats."""
        return (self.log_posterior(batch.inputs).argmax(1) == batch.y.to(self.device)).float().mean().item()

    # ------------------------------------------------------------------ sampling

    def sample(self, n: int) -> SelectionBatch:
        """n samples with v = 1, by rejection; reproducible for the model's seed."""
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        g, k = self.generator, self.n_classes
        prior = self.log_prior.exp()
        kept: list[tuple[torch.Tensor, ...]] = []
        have, drawn, accepted, rate = 0, 0, 0, 0.5
        while have < n:
            chunk = max(1024, int(1.2 * (n - have) / max(rate, 1e-3)))
            y = torch.multinomial(prior, chunk, replacement=True, generator=g)
            x = torch.randn(chunk, self.dims[0], generator=g, device=self.device)
            x2 = torch.randn(chunk, self.dims[1], generator=g, device=self.device)
            x[:, :k] += self.means[0][y]
            x2[:, :k] += self.means[1][y]
            logit = self.selection_logits(x, x2).gather(1, y[:, None]).squeeze(1)
            v = torch.rand(chunk, generator=g, device=self.device) < torch.sigmoid(logit)
            kept.append((x[v], x2[v], y[v]))
            drawn, accepted = drawn + chunk, accepted + int(v.sum())
            have, rate = accepted, accepted / drawn
        x, x2, y = (torch.cat(t)[:n] for t in zip(*kept))
        return SelectionBatch({"x": x, "x2": x2}, y, rate)
