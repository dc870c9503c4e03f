"""The product of experts at the heart of I2M2.

Conditioning the generative model on the selection variable v = 1 gives

    log p(y | x, x', v=1) = log p(y|x) + log p(y|x') + [log p(v=1|x,x',y) - log p(y)] + c(x, x')

so a classifier is a sum of experts' logits: one intra-modality expert per modality and one
inter-modality (joint) expert over the pair. There are no weights between experts and one
loss on the combined output. Baselines are the same object with fewer experts:

    uni-modal       one expert reading one modality          model.uni("image")
    intra-modality  every expert reading a single modality    model.intra()
    inter-modality  every expert reading several modalities   model.inter()
    I2M2            all of them                               model

The output family (``likelihoods.py``: ``Categorical``, ``Bernoulli``, ``SoftScores``) turns the
summed logits into a distribution and owns the loss, the target check and the metrics.

Every model built from an I2M2, baselines included, gets the same loss on its own summed
logits: never log-probabilities for one and raw logits for another.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import torch
from torch import nn

from .likelihoods import Likelihood, as_likelihood, describe


class MissingModalityError(ValueError):
    """Data that lack a modality an expert reads, where every expert must run (training and
    validation: the expert would drop out and a smaller model be trained or scored)."""


def unregistered_tensors(net: nn.Module):
    """Names of tensors requiring grad that a module keeps outside its parameters.

    The published low-rank fusion kept its factors in a plain Python list: never trained on
    GPU, never saved. This finds such tensors in attributes, lists, tuples and dicts.
    """
    registered = {id(p) for p in net.parameters()}
    for module_name, module in net.named_modules():
        for attr, value in vars(module).items():
            if isinstance(value, dict):
                items = list(value.items())
            elif isinstance(value, (list, tuple)):
                items = list(enumerate(value))
            else:
                items = [("", value)]
            for key, t in items:
                if isinstance(t, torch.Tensor) and t.requires_grad and id(t) not in registered:
                    yield ".".join(filter(None, [module_name, attr, str(key)]))


class Expert(nn.Module):
    """A network and the modalities it reads.

    The network is called with the tensors it reads, positionally, in the order of ``reads``.
    """

    def __init__(self, net: nn.Module, reads: Sequence[str] | str):
        super().__init__()
        reads = (reads,) if isinstance(reads, str) else tuple(reads)
        if not reads or not all(isinstance(m, str) and m for m in reads):
            raise ValueError(f"Expert reads must name at least one modality, got {reads!r}")
        if len(set(reads)) != len(reads):
            raise ValueError(f"Expert reads names a modality twice: {reads!r}")
        stray = list(unregistered_tensors(net))
        if stray:
            raise TypeError(
                f"expert network holds trainable tensors that are not registered parameters "
                f"({', '.join(stray)}): the optimiser and .to(device) would never see them; "
                f"use nn.Parameter / nn.ParameterList"
            )
        self.net = net
        self.reads = reads
        # The expert's exponent in the product, p(y|x) ~ prod_e p_e(y|x)^weight_e: 1 as published;
        # ``weigh_experts`` fits it on validation. A buffer: saved and moved, never trained.
        self.register_buffer("weight", torch.ones(()))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.setdefault(prefix + "weight", torch.ones(()))  # a state dict from before expert weights
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def is_inter(self) -> bool:
        """Reads more than one modality: models inter-modality dependencies."""
        return len(self.reads) > 1

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        try:
            z = self.net(*(inputs[m] for m in self.reads))
            return z * self.weight.to(z.dtype)  # times 1 is exact: the published sum is unchanged
        except torch.cuda.OutOfMemoryError:
            raise
        except (RuntimeError, TypeError) as e:  # a shape, dtype or type mismatch deep in the network
            shapes = ", ".join(f"{m} {describe(inputs[m])}" for m in self.reads)
            error = ValueError if isinstance(e, RuntimeError) else TypeError
            raise error(f"expert reading {', '.join(self.reads)} failed on inputs of shape {shapes} "
                        f"(batch first): {str(e).splitlines()[0]}") from e

    def extra_repr(self) -> str:
        return f"reads={self.reads}"


def same_shape(expert_logits: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
    """The experts' logits, refused unless they agree in shape (else broadcasting would sum them)."""
    (first, z0), *rest = expert_logits.items()
    for name, z in rest:
        if z.shape != z0.shape:
            raise ValueError(f"expert {name!r} returned logits of shape {tuple(z.shape)}, expert "
                             f"{first!r} {tuple(z0.shape)}: experts must agree")
    return list(expert_logits.values())


@dataclass
class Output:
    """What a product of experts returns for a batch."""

    logits: torch.Tensor  # (B, K) sum of the experts' logits
    expert_logits: dict[str, torch.Tensor]  # {expert name: (B, K)}, only the experts that ran
    log_probs: torch.Tensor  # the likelihood's: log_softmax(logits) (categorical), logsigmoid (the others)

    @property
    def probs(self) -> torch.Tensor:
        return self.log_probs.exp()


class I2M2(nn.Module):
    """Product of named experts: ``logits = sum of the experts' logits``.

    Args:
        experts: ``{name: Expert}``; any number, in any combination of modalities.
        likelihood: the output family, ``ik.Categorical()`` (default), ``ik.Bernoulli()``,
            ``ik.SoftScores()``, or the shorthand of one (see ``likelihoods.py``).
        backbone: optional shared module run once on the inputs; it returns a dict of
            features that the experts read instead of the raw inputs (the frozen
            shared-backbone regime of the vision-language benchmarks).
        modalities: the input keys the model accepts. Defaults to every modality an expert
            reads (required when a backbone renames its outputs); subsets keep their
            parent's, so a baseline accepts the same batches as the full model.
    """

    def __init__(
        self,
        experts: Mapping[str, Expert],
        likelihood: Likelihood | str = "categorical",
        backbone: nn.Module | None = None,
        modalities: Sequence[str] | None = None,
    ):
        super().__init__()
        if not experts:
            raise ValueError("I2M2 needs at least one expert")
        for name, expert in experts.items():
            if not isinstance(expert, Expert):
                raise TypeError(f"expert {name!r} must be an ik.Expert, got {type(expert).__name__}")
        self.experts = nn.ModuleDict(dict(experts))
        self.likelihood = as_likelihood(likelihood)
        self.backbone = backbone
        if modalities is None:
            modalities = sorted({m for e in self.experts.values() for m in e.reads})
        self.modalities = tuple(modalities)
        for name, expert in self.experts.items():  # an expert that can never run is a mistake, not a baseline
            if not expert.reads:  # Expert refuses this; its reads were changed since
                raise ValueError(f"expert {name!r} reads no modality: it has nothing to read")
            unknown = [m for m in expert.reads if m not in self.modalities]
            if backbone is None and unknown:  # without a backbone the experts read the inputs themselves
                raise ValueError(f"expert {name!r} reads {', '.join(map(repr, unknown))}, not among the model's "
                                 f"modalities {list(self.modalities)}: it has nothing to read and would never run")

    def forward(self, inputs: Mapping[str, torch.Tensor], strict: bool = False) -> Output:
        """The experts' logits and their sum. An expert whose modality is absent drops out
        (a missing modality at test time), unless ``strict``: then that is an error naming it."""
        features = self.checked_inputs(inputs)
        if self.backbone is not None:
            features = self.backbone(features)
        if strict:  # training and validation: every expert runs, or the model is not the one asked for
            self.require_experts(features, "the batch")
        expert_logits = {name: expert(features) for name, expert in self.experts_that_run(features).items()}
        logits = torch.stack(same_shape(expert_logits)).sum(0)
        return Output(logits, expert_logits, self.likelihood.log_probs(logits))

    def loss(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """One loss on the combined output, the same for every model built from this one:
        the likelihood's (``weight``: per class, or per label's positive class)."""
        return self.likelihood.loss(logits, target, weight)

    # -- the guards, where the data enter

    def checked_inputs(self, inputs: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
        if not isinstance(inputs, Mapping):
            raise TypeError(f"the model takes a dict {{modality: tensor}}, got {type(inputs).__name__}")
        unknown = sorted(set(inputs) - set(self.modalities))
        if unknown:
            raise KeyError(f"unknown input modality {', '.join(map(repr, unknown))}; "
                           f"this model reads {list(self.modalities)}")
        return inputs

    def experts_that_run(self, features: Mapping[str, torch.Tensor]) -> dict[str, Expert]:
        """The experts whose modalities are all present; at least one."""
        present = {n: e for n, e in self.experts.items() if all(m in features for m in e.reads)}
        if not present:
            needs = {n: list(e.reads) for n, e in self.experts.items()}
            raise ValueError(f"no expert can run on modalities {sorted(features)}; experts read {needs}")
        return present

    def require_experts(self, available: Iterable[str], where: str) -> None:
        """Refuse ``available`` modalities that leave an expert out, naming each such expert and
        the modality it lacks (``where``: the data, for the message)."""
        available = set(available)
        lacking: dict[str, list[str]] = {}
        for name, expert in self.experts.items():
            for m in expert.reads:
                if m not in available:
                    lacking.setdefault(m, []).append(name)
        if lacking:
            said = "; ".join(f"modality {m!r}, which expert{'s' if len(names) > 1 else ''} "
                             f"{', '.join(map(repr, names))} read{'' if len(names) > 1 else 's'}"
                             for m, names in lacking.items())
            raise MissingModalityError(
                f"{where} lacks {said} (it holds {sorted(available)}): fit would leave "
                f"{'them' if sum(map(len, lacking.values())) > 1 else 'it'} out; give every modality "
                f"the experts read, or fit a subset of the experts (model.subset)")

    # -- baselines from the same object (they share this model's experts and parameters) --

    def subset(self, *names: str) -> "I2M2":
        """The product of the named experts only, sharing their parameters with this model."""
        missing = [n for n in names if n not in self.experts]
        if missing or not names:
            raise KeyError(f"no expert named {missing or '(none given)'}; experts are {list(self.experts)}")
        return I2M2({n: self.experts[n] for n in names}, self.likelihood, self.backbone, self.modalities)

    def intra(self) -> "I2M2":
        """The intra-modality model: every expert that reads a single modality."""
        return self.subset(*[n for n, e in self.experts.items() if not e.is_inter])

    def inter(self) -> "I2M2":
        """The inter-modality model: every expert that reads several modalities."""
        return self.subset(*[n for n, e in self.experts.items() if e.is_inter])

    def uni(self, modality: str) -> "I2M2":
        """The uni-modal model of one modality: the experts that read it alone."""
        names = [n for n, e in self.experts.items() if e.reads == (modality,)]
        if not names:
            raise KeyError(f"no expert reads {modality!r} alone; experts read "
                           f"{ {n: list(e.reads) for n, e in self.experts.items()} }")
        return self.subset(*names)

    def baselines(self) -> dict[str, "I2M2"]:
        """Every model the paper compares, by name: uni:<modality>..., intra, inter, i2m2."""
        models = {}
        for m in self.modalities:
            if any(e.reads == (m,) for e in self.experts.values()):
                models[f"uni:{m}"] = self.uni(m)
        if any(not e.is_inter for e in self.experts.values()):
            models["intra"] = self.intra()
        if any(e.is_inter for e in self.experts.values()):
            models["inter"] = self.inter()
        models["i2m2"] = self
        return models
