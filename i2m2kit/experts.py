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

Two kinds of head:

* ``"multiclass"``: K mutually exclusive classes. Experts give (B, K) logits; the product
  of the experts' softmax distributions, renormalised, is ``softmax(sum of logits)``.
* ``"multilabel"``: L independent binary labels (fastMRI's four findings). Experts give
  (B, L) log-odds; the renormalised product of the experts' Bernoulli distributions for each
  label is ``sigmoid(sum of log-odds)``; binary cross-entropy on the summed logits.
* ``"answers"``: soft scores in [0, 1] per candidate answer (VQA: how many annotators gave
  it). Combined and trained exactly as ``"multilabel"`` (each answer a Bernoulli whose experts
  multiply; binary cross-entropy of the summed logits against the scores), but the model
  answers with its most probable answer and is scored by the VQA score of that answer.

Every model built from an I2M2, baselines included, gets the same loss on its own summed
logits: never log-probabilities for one and raw logits for another.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

HEADS = ("multiclass", "multilabel", "answers")


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


def describe(x) -> str:
    """Shape and dtype of an input (tensors, or tuples of them), for error messages."""
    if isinstance(x, torch.Tensor):
        return f"{tuple(x.shape)} {str(x.dtype).removeprefix('torch.')}"
    if isinstance(x, tuple):
        return "(" + ", ".join(map(describe, x)) + ")"
    return type(x).__name__


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


@dataclass
class Output:
    """What a product of experts returns for a batch."""

    logits: torch.Tensor  # (B, K) sum of the experts' logits
    expert_logits: dict[str, torch.Tensor]  # {expert name: (B, K)}, only the experts that ran
    log_probs: torch.Tensor  # multiclass: log_softmax(logits); multilabel, answers: logsigmoid(logits)

    @property
    def probs(self) -> torch.Tensor:
        return self.log_probs.exp()


def log_probs(logits: torch.Tensor, head: str) -> torch.Tensor:
    """Log-probabilities of a head's logits (per class, or of each label being positive)."""
    if head == "multiclass":
        return F.log_softmax(logits, dim=-1)
    if head in ("multilabel", "answers"):
        return F.logsigmoid(logits)
    raise ValueError(f"head must be one of {HEADS}, got {head!r}")


class I2M2(nn.Module):
    """Product of named experts: ``logits = sum of the experts' logits``.

    Args:
        experts: ``{name: Expert}``; any number, in any combination of modalities.
        head: ``"multiclass"``, ``"multilabel"`` or ``"answers"`` (see the module docstring).
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
        head: str = "multiclass",
        backbone: nn.Module | None = None,
        modalities: Sequence[str] | None = None,
    ):
        super().__init__()
        if not experts:
            raise ValueError("I2M2 needs at least one expert")
        for name, expert in experts.items():
            if not isinstance(expert, Expert):
                raise TypeError(f"expert {name!r} must be an ik.Expert, got {type(expert).__name__}")
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        self.experts = nn.ModuleDict(dict(experts))
        self.head = head
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

    def forward(self, inputs: Mapping[str, torch.Tensor], strict: bool = False) -> Output:
        """The experts' logits and their sum. An expert whose modality is absent drops out
        (a missing modality at test time), unless ``strict``: then that is an error naming it."""
        if not isinstance(inputs, Mapping):
            raise TypeError(f"the model takes a dict {{modality: tensor}}, got {type(inputs).__name__}")
        unknown = sorted(set(inputs) - set(self.modalities))
        if unknown:
            raise KeyError(
                f"unknown input modality {', '.join(map(repr, unknown))}; "
                f"this model reads {list(self.modalities)}"
            )
        features = self.backbone(inputs) if self.backbone is not None else inputs
        if strict:  # training and validation: every expert runs, or the model is not the one asked for
            self.require_experts(features, "the batch")
        # An expert whose modality is absent drops out: a missing modality at test time.
        present = {n: e for n, e in self.experts.items() if all(m in features for m in e.reads)}
        if not present:
            needs = {n: list(e.reads) for n, e in self.experts.items()}
            raise ValueError(f"no expert can run on modalities {sorted(inputs)}; experts read {needs}")
        expert_logits = {}
        for name, expert in present.items():
            z = expert(features)
            if expert_logits and z.shape != next(iter(expert_logits.values())).shape:
                first = next(iter(expert_logits))
                raise ValueError(
                    f"expert {name!r} returned logits of shape {tuple(z.shape)}, expert "
                    f"{first!r} {tuple(expert_logits[first].shape)}: experts must agree"
                )
            expert_logits[name] = z
        logits = torch.stack(list(expert_logits.values())).sum(0)
        return Output(logits, expert_logits, log_probs(logits, self.head))

    def loss(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """One loss on the combined output, the same for every model built from this one.

        multiclass: cross-entropy; ``target`` holds class indices (B,) or probabilities (B, K);
        ``weight`` is a per-class weight. multilabel: binary cross-entropy on the logits;
        ``target`` (B, L) holds 0/1 labels or soft scores; ``weight`` is a per-label
        positive-class weight. answers: the same binary cross-entropy against the scores,
        summed over answers and averaged over examples (a mean over thousands of answers,
        nearly all scoring 0, would shrink the gradient by their number).
        """
        if self.head == "multiclass":
            k = logits.shape[-1]
            if target.shape == logits.shape[:1] and not target.is_floating_point():
                # torch says "out of bounds"; on a GPU (not checked here: a host sync every step) a device assert
                outside = target[(target < 0) | (target >= k)] if target.device.type == "cpu" else ()
                if len(outside):
                    raise ValueError(f"target class {int(outside[0])} is outside 0..{k - 1}: the model has {k} classes")
                if target.dtype == torch.bool:  # torch would read it as bytes, or refuse it obscurely
                    raise ValueError(f"multiclass targets must be class indices, got {describe(target)}; "
                                     f"pass target.long()")
                target = target.long()  # int32 or uint8 class indices: the same classes
            elif target.shape != logits.shape or not target.is_floating_point():
                raise ValueError(f"multiclass targets must be class indices (integers, shape {tuple(logits.shape[:1])}) "
                                 f"or probabilities (floats, shape {tuple(logits.shape)}); got {describe(target)}")
            if weight is not None and weight.shape != (k,):  # else torch's error at the first step
                raise ValueError(f"loss_weight must hold one weight per class ({k}), got shape {tuple(weight.shape)}")
            return F.cross_entropy(logits, target, weight=weight)
        if target.shape != logits.shape:
            raise ValueError(f"{self.head} targets must have the logits' shape {tuple(logits.shape)}, "
                             f"got {describe(target)}")
        bce = F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), pos_weight=weight)
        return bce * logits.shape[-1] if self.head == "answers" else bce

    # -- baselines from the same object (they share this model's experts and parameters) --

    def subset(self, *names: str) -> "I2M2":
        """The product of the named experts only, sharing their parameters with this model."""
        missing = [n for n in names if n not in self.experts]
        if missing or not names:
            raise KeyError(f"no expert named {missing or '(none given)'}; experts are {list(self.experts)}")
        return I2M2({n: self.experts[n] for n in names}, self.head, self.backbone, self.modalities)

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
