"""The selection-variable model of I2M2, simulated, with its exact Bayes posterior.

The graphical model: y -> x, y -> x', and a binary selection variable v on (x, x', y) that is
always observed as v = 1. Each modality's coordinates come in three blocks:

    signal (K coords)        class-conditional: intra-modality signal
    interaction (m coords)   standard normal whatever y is; the selection reads them
    nuisance (the rest)      standard normal, read by nothing

    y ~ Categorical(prior)
    x_signal | y ~ N(mu_y, I)                     "gaussian": |mu_y - mu_y'| = intra
                or 1/2 N(mu_y, I) + 1/2 N(-mu_y, I)   "mixture": mirror-image components, so the
                                                  class mean is 0 and no linear read-out of the
                                                  modality sees the class (real data is rarely
                                                  linearly separable per modality)
    p(v=1 | x, x', y) = sigmoid(inter * s_y(x, x') + bias)
    keep the samples with v = 1                   (vectorised rejection sampling)

The interaction s_y(x, x') = x_r^T Q_y x'_r / sqrt(m) is a bilinear form on the interaction
coordinates with Q_y an orthogonal m x m matrix per class (Q_1 = -Q_0 for two classes: the
label sign times a product of projections). Because Q_y is orthogonal and x_r, x'_r are
standard normal whatever y is, integrating out either modality leaves a selection
probability that does not depend on y: each modality alone says nothing about y through
the selection, and p(y | x, v=1) = p(y | x). The label is visible there only in how the two
modalities relate: inter-modality signal.

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
CLASS_CONDITIONALS = ("gaussian", "mixture")


@dataclass
class SelectionBatch:
    inputs: dict[str, torch.Tensor]  # {"x": (N, d), "x2": (N, d')}
    y: torch.Tensor  # (N,) class indices
    acceptance: float  # fraction of the drawn samples that had v = 1


class SelectionModel:
    """Sampler and exact posterior of the selection-variable model.

    Args:
        n_classes: K.
        dims: dimension of each modality: K signal coordinates, the interaction
            coordinates, and nuisance coordinates for the rest.
        intra: per modality, the distance between the nearest class means (0: the modality
            alone says nothing about y).
        inter: strength of the selection's dependence on the interaction (0: no
            inter-modality signal, the posterior is naive Bayes).
        interaction: the form of s_y; ``"bilinear"``.
        interaction_dims: m, the coordinates per modality the interaction reads (default:
            all past the signal block, so no nuisance coordinates).
        class_conditional: per modality, ``"gaussian"`` or ``"mixture"`` (see above).
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
        interaction_dims: int | None = None,
        class_conditional: Sequence[str] = ("gaussian", "gaussian"),
        bias: float = 0.0,
        prior: Sequence[float] | None = None,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ):
        if n_classes < 2:
            raise ValueError(f"n_classes must be at least 2, got {n_classes}")
        if len(dims) != 2 or len(intra) != 2:
            raise ValueError(f"dims and intra need one value per modality (2), got {dims!r} and {intra!r}")
        if interaction_dims is None:
            interaction_dims = min(dims) - n_classes
        if interaction_dims < 1 or min(dims) < n_classes + interaction_dims:
            raise ValueError(f"dims must each hold n_classes={n_classes} signal coordinates and "
                             f"interaction_dims={interaction_dims} >= 1 more, got dims={tuple(dims)}")
        if len(class_conditional) != 2 or any(c not in CLASS_CONDITIONALS for c in class_conditional):
            raise ValueError(f"class_conditional needs one of {CLASS_CONDITIONALS} per modality, got {class_conditional!r}")
        if interaction != "bilinear":
            raise ValueError(f"interaction must be 'bilinear', got {interaction!r}")
        if not all(math.isfinite(float(v)) for v in (*intra, inter, bias)):  # NaN would hang the sampler
            raise ValueError(f"intra, inter and bias must be finite numbers, got intra={intra}, inter={inter}, bias={bias}")
        if any(s < 0 for s in intra) or inter < 0:
            raise ValueError(f"intra and inter strengths must be non-negative, got intra={intra}, inter={inter}")
        self.n_classes, self.dims = n_classes, tuple(int(d) for d in dims)
        self.intra, self.inter, self.bias = tuple(float(s) for s in intra), float(inter), float(bias)
        self.interaction, self.seed = interaction, seed
        self.class_conditional = tuple(class_conditional)
        self.device = torch.device(device)
        prior_t = torch.full((n_classes,), 1.0 / n_classes) if prior is None else torch.as_tensor(prior, dtype=torch.float32)
        if prior_t.shape != (n_classes,) or (prior_t <= 0).any() or abs(float(prior_t.sum()) - 1) > 1e-6:
            raise ValueError(f"prior must be {n_classes} positive probabilities summing to 1, got {prior!r}")
        self.log_prior = prior_t.log().to(self.device)

        g = torch.Generator().manual_seed(seed)
        eye = torch.eye(n_classes)
        # class means in the first K coordinates, pairwise distance = intra strength
        self.means = [(s / math.sqrt(2) * eye).to(self.device) for s in self.intra]
        self.m = int(interaction_dims)
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

    def uni_log_posterior(self, x: torch.Tensor, which: int) -> torch.Tensor:
        """log p(y | x) of modality ``which`` (0: x, 1: x'): (N, K)."""
        # log_softmax(log p(y) + log p(x | y)); coordinates past K cancel
        xs, mu = x[:, None, : self.n_classes], self.means[which][None]
        log_lik = -0.5 * ((xs - mu) ** 2).sum(-1)
        if self.class_conditional[which] == "mixture":
            log_lik = torch.logaddexp(log_lik, -0.5 * ((xs + mu) ** 2).sum(-1))
        return torch.log_softmax(self.log_prior + log_lik, dim=1)

    def terms(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The three experts' exact targets, each (N, K), up to a constant per sample:
        ``x``: log p(y|x); ``x2``: log p(y|x'); ``selection``: log p(v=1|x,x',y) - log p(y)."""
        x, x2 = self._split(inputs)
        return {
            "x": self.uni_log_posterior(x, 0),
            "x2": self.uni_log_posterior(x2, 1),
            "selection": self.selection_term(x, x2),
        }

    def selection_term(self, x: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """The joint expert's exact target, log p(v=1 | x, x', y) - log p(y): (N, K)."""
        return F.logsigmoid(self.selection_logits(x, x2)) - self.log_prior

    def log_posterior(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Exact log p(y | x, x', v=1): (N, K)."""
        return torch.log_softmax(sum(self.terms(inputs).values()), dim=1)

    def oracle_accuracies(self, batch: SelectionBatch) -> dict[str, float]:
        """Accuracy of the exact answer each kind of model is trying to learn.

        ``x alone`` / ``x' alone``: the uni-modal posteriors (what a uni-modal model can reach);
        ``intra (naive Bayes)``: their product (the intra-modality model's limit);
        ``selection term``: the selection term with the prior (the inter-modality signal alone);
        ``Bayes``: the full posterior (the limit of I2M2, and of a joint model with enough data).
        """
        t, y = self.terms(batch.inputs), batch.y.to(self.device)
        answers = {
            "x alone": t["x"],
            "x' alone": t["x2"],
            "intra (naive Bayes)": t["x"] + t["x2"] - self.log_prior,
            "selection term": t["selection"] + self.log_prior,
            "Bayes": t["x"] + t["x2"] + t["selection"],
        }
        return {k: (v.argmax(1) == y).float().mean().item() for k, v in answers.items()}

    def bayes_accuracy(self, batch: SelectionBatch) -> float:
        """Accuracy of the exact posterior on a batch: the limit no classifier beats."""
        return (self.log_posterior(batch.inputs).argmax(1) == batch.y.to(self.device)).float().mean().item()

    # ------------------------------------------------------------------ sampling

    def sample(self, n: int) -> SelectionBatch:
        """n samples with v = 1, by vectorised rejection; reproducible for the model's seed.

        The selection reads y and the interaction coordinates only through the score
        s = w . x'_r / sqrt(m), w = Q_y^T x_r, and given x_r that score is |x_r| t / sqrt(m)
        with t ~ N(0, 1), whatever Q_y is (Q_y is orthogonal). So a candidate is only
        y, |x_r|^2 (chi-square with m degrees of freedom, from m/2 uniforms) and t; it is
        accepted or rejected, and accepted samples alone draw the direction of x_r, x'_r given
        its component along w, and their signal and nuisance coordinates. The same
        distribution as drawing everything and rejecting, at a fraction of the random numbers.
        """
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        g, k, m, dev = self.generator, self.n_classes, self.m, self.device
        cumulative = self.log_prior.exp().cumsum(0)
        kept: list[tuple[torch.Tensor, ...]] = []
        have, drawn, rate = 0, 0, 0.5
        while have < n:
            chunk = max(1024, int(1.1 * (n - have) / max(rate, 1e-3)))
            y = torch.searchsorted(cumulative, torch.rand(chunk, generator=g, device=dev)).clamp_(max=k - 1)
            r2 = self._chi_square(chunk)
            t = torch.randn(chunk, generator=g, device=dev)
            accept = torch.sigmoid(self.inter * r2.sqrt() * t / math.sqrt(m) + self.bias)
            v = torch.rand(chunk, generator=g, device=dev) < accept
            kept.append((y[v], r2[v], t[v]))
            drawn, have = drawn + chunk, have + int(v.sum())
            rate = have / drawn
        y, r2, t = (torch.cat(parts)[:n] for parts in zip(*kept))
        # x_r = |x_r| d with d uniform on the sphere; x'_r = Q_y^T p, with p ~ N(0, I) whose
        # component along d is t, so that w . x'_r = (Q_y^T x_r) . (Q_y^T p) = |x_r| t
        d = torch.randn(n, m, generator=g, device=dev)
        d /= d.norm(dim=1, keepdim=True).clamp_min(1e-12)
        z = torch.randn(n, m, generator=g, device=dev)
        p = z.addcmul_(d, (t - (z * d).sum(1))[:, None])
        x2r = torch.empty_like(p)
        for c in range(k):  # one matrix product per class
            idx = (y == c).nonzero().squeeze(1)
            x2r[idx] = p[idx] @ self.q[c]
        xr = d.mul_(r2.sqrt()[:, None])
        x, x2 = (self._fill(y, r, which) for which, r in ((0, xr), (1, x2r)))
        return SelectionBatch({"x": x, "x2": x2}, y, rate)

    def _chi_square(self, n: int) -> torch.Tensor:
        """n draws of |x_r|^2 ~ chi-square(m): -2 log of m/2 uniforms (plus a squared normal if m is odd)."""
        half, odd = divmod(self.m, 2)
        r2 = torch.zeros(n, device=self.device)
        if half:
            u = torch.rand(n, half, generator=self.generator, device=self.device)
            r2 -= 2 * torch.log1p(-u).sum(1)  # 1 - u lies in (0, 1]: no log(0)
        if odd:
            r2 += torch.randn(n, generator=self.generator, device=self.device) ** 2
        return r2

    def _fill(self, y: torch.Tensor, interaction: torch.Tensor, which: int) -> torch.Tensor:
        """One modality's samples given y and their interaction coordinates."""
        g, k, m, n = self.generator, self.n_classes, self.m, len(y)
        shift = self.means[which][y]
        if self.class_conditional[which] == "mixture":  # one of the two mirror-image components
            shift = shift * (torch.randint(0, 2, (n, 1), generator=g, device=self.device) * 2 - 1)
        x = torch.empty(n, self.dims[which], device=self.device)
        x[:, :k] = torch.randn(n, k, generator=g, device=self.device) + shift
        x[:, k:k + m] = interaction
        x[:, k + m:] = torch.randn(n, self.dims[which] - k - m, generator=g, device=self.device)
        return x
