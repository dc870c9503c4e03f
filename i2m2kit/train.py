"""The one training loop: every benchmark, every model, every regime of the published code.

A regime is a list of phases (``training_phases``, the one place regimes are read). A phase
says which experts it trains (a view of the model sharing its parameters), what it freezes
and what it starts from:

* ``"joint"``: all experts trained together from scratch on the one loss of the combined
  output (MIMIC-III, fastMRI).
* ``"pretrain_finetune"``: each expert is first trained alone (its own uni-modal or
  inter-modality model), then all are fine-tuned jointly, starting from the pretrained
  experts (AV-MNIST).
* ``"finetune"``: the fine-tuning phase alone, from experts already trained (the published
  AV-MNIST code loads the checkpoints of its uni-modal and late-fusion runs this way).
* ``"frozen_backbone"``: the model's shared backbone is frozen and only the experts, the
  heads, are trained (VQA, NLVR2).

``fit`` runs the phases, a phase its epochs, an epoch its steps; ``train_step`` is one step,
public so that benchmarks time what ``fit`` does. The loss is summed on the device and read
once per ``LOG_EVERY`` steps (on a GPU a read is a host synchronisation): a non-finite loss is
still named with its phase, epoch and step.

A checkpoint (``state_dict``s, RNG state, history; written atomically) is saved after every
epoch; ``resume=True`` continues from it to the same result as an uninterrupted run: the
shuffling of each epoch is seeded from (seed, phase, epoch) and the RNG state that dropout
draws from is restored. Each checkpoint records a fingerprint of the run that made it (every
parameter's name and shape, the phases, the schedule and optimizer settings, the package
version): a checkpoint of another run is refused, not resumed into something else.
"""

from __future__ import annotations

import contextlib
import numbers
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from . import checkpoints, distributed
from .data import TensorData, check_not_empty, make_loader, modalities_of, to_device
from .experts import I2M2, MissingModalityError
from .features import cached_features, heads_on_features
from .inference import autocast, evaluate, resolve_device

REGIMES = ("joint", "pretrain_finetune", "finetune", "frozen_backbone")
LOWER_IS_BETTER = ("loss", "nll", "ece")
LOG_EVERY = 50  # steps between reads of the summed loss (its finiteness checked then, and at epoch end)


# ---------------------------------------------------------------------------- phases


@dataclass
class Phase:
    name: str
    model: I2M2  # the experts it trains: the whole model, or a view of some of its experts
    epochs: int
    frozen: nn.Module | None = None  # kept as it is (and in eval mode): the shared backbone
    from_trained: bool = False  # starts from trained experts, whose weights compete in model selection


def check_pretrain_epochs(pretrain_epochs: Any) -> None:
    """None: as many as ``epochs``. 0 or less is refused: neither "no pretraining" (that is
    regime="joint", or "finetune" from trained experts) nor "as many as epochs" (as 0 was read)."""
    if pretrain_epochs is not None and (isinstance(pretrain_epochs, bool) or
                                        not isinstance(pretrain_epochs, numbers.Integral) or pretrain_epochs < 1):
        raise ValueError(f"pretrain_epochs must be a whole number of at least 1, or None for as many as epochs; got "
                         f"{pretrain_epochs!r} (for no pretraining use regime='joint', or 'finetune' from trained experts)")


def training_phases(model: I2M2, regime: str, epochs: int, pretrain_epochs: int | None = None,
                    pretrained: Iterable[str] = ()) -> list[Phase]:
    """The phases of a regime (see the module docstring). With ``"pretrain_finetune"``, a model
    of one expert is its own pretraining (no fine-tuning after it), and the experts named in
    ``pretrained`` were trained alone already (no pretraining phase)."""
    check_pretrain_epochs(pretrain_epochs)
    if regime == "pretrain_finetune":
        pre_epochs = epochs if pretrain_epochs is None else pretrain_epochs
        if len(model.experts) == 1:
            return [Phase(f"pretrain:{next(iter(model.experts))}", model, pre_epochs)]
        pre = [Phase(f"pretrain:{n}", model.subset(n), pre_epochs) for n in model.experts if n not in set(pretrained)]
        return pre + [Phase("finetune", model, epochs, from_trained=True)]
    if regime == "finetune":
        return [Phase("finetune", model, epochs, from_trained=True)]
    if regime == "frozen_backbone":
        if model.backbone is None:
            raise ValueError("regime='frozen_backbone' needs a model built with a backbone")
        return [Phase("heads", model, epochs, frozen=model.backbone)]
    if regime == "joint":
        return [Phase("joint", model, epochs)]
    raise ValueError(f"regime must be one of {REGIMES}, got {regime!r}")


# ---------------------------------------------------------------------------- one step


def train_step(model: nn.Module, inputs: dict[str, torch.Tensor], target: torch.Tensor,
               optimizer: torch.optim.Optimizer, *, loss_of: Callable | None = None,
               scaler: torch.amp.GradScaler | None = None, loss_weight: torch.Tensor | None = None,
               clip_grad_norm: float | None = None, amp: bool | torch.dtype = True,
               loss_scale: float = 1.0) -> torch.Tensor:
    """One optimisation step on a batch already on the model's device; returns the loss,
    detached, on the device (reading it is left to the caller: no host synchronisation here).

    ``model`` is what runs the batch (an I2M2, or its DistributedDataParallel wrapper);
    ``loss_of``: the I2M2's loss when ``model`` wraps it. ``amp``: mixed precision on CUDA
    (True), or a dtype to autocast to on any device. ``loss_scale`` multiplies the loss
    before backward only (a rank's share of a global batch under torchrun).
    """
    device = target.device
    with autocast(device, amp):
        try:  # a modality missing from a batch would drop its experts in silence
            out = model(inputs, strict=True)
        except MissingModalityError as e:
            raise MissingModalityError(f"train set: {e}") from None
    loss = (loss_of or model.loss)(out.logits.float(), target, loss_weight)
    optimizer.zero_grad(set_to_none=True)
    scaled = loss * loss_scale if loss_scale != 1.0 else loss
    (scaler.scale(scaled) if scaler is not None else scaled).backward()
    if clip_grad_norm is not None:
        if scaler is not None:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], clip_grad_norm)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return loss.detach()


# ---------------------------------------------------------------------------- the loop


@dataclass
class FitResult:
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per epoch of every phase
    best: dict[str, float] = field(default_factory=dict)  # validation metrics of the kept model
    best_epoch: int = 0  # epoch of the final phase whose weights were kept
    # seconds from the start of this call of fit to the end of each epoch's training (one per
    # row of history written by this call; not kept in checkpoints: wall time is the machine's)
    elapsed: list[float] = field(default_factory=list)


def _better(value: float, best: float | None, monitor: str) -> bool:
    if best is None:
        return True
    return value < best if monitor in LOWER_IS_BETTER else value > best


@dataclass
class Selection:
    """Model selection and early stopping within a phase: the best validation value so far."""

    monitor: str
    best_value: float | None = None
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    bad_epochs: int = 0

    def update(self, value: float, epoch: int, model: torch.nn.Module) -> bool:
        """Record an epoch's validation value; True when it is the best so far."""
        if not _better(value, self.best_value, self.monitor):
            self.bad_epochs += 1
            return False
        self.best_value, self.best_epoch, self.bad_epochs = value, epoch, 0
        self.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        return True

    def state(self) -> dict[str, Any]:
        return {"best_value": self.best_value, "best_epoch": self.best_epoch,
                "best_state": self.best_state, "bad_epochs": self.bad_epochs}


def fit(
    model: I2M2,
    train: Dataset | DataLoader,
    valid: Dataset | DataLoader | None = None,
    *,
    epochs: int = 10,
    regime: str = "joint",
    pretrain_epochs: int | None = None,
    optimizer: Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer] | None = None,
    batch_size: int = 64,
    clip_grad_norm: float | None = None,
    loss_weight: torch.Tensor | None = None,
    monitor: str = "loss",
    patience: int | None = None,
    restore_best: bool = True,
    device: str | torch.device = "auto",
    amp: bool = True,
    seed: int = 0,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    pretrained: Iterable[str] = (),
    feature_cache: bool | str | os.PathLike = True,
) -> FitResult:
    """Train ``model`` in place and return its history.

    Every expert of ``model`` is trained: ``train`` and ``valid`` must hold every modality an
    expert reads (a missing one is an error naming the expert and the modality, not a
    smaller model trained or scored in silence); an empty set is an error naming it.

    Args:
        epochs: epochs of the joint (or fine-tuning, or heads) phase, at least 1.
        pretrain_epochs: with ``regime="pretrain_finetune"``, the epochs each expert is first
            trained alone; None (default): as many as ``epochs``. At least 1: 0 or a negative
            number is refused (no pretraining is ``regime="joint"``, or ``"finetune"`` from
            experts already trained). Checked, and ignored, with the other regimes.
        pretrained: with ``regime="pretrain_finetune"``, experts already trained alone (loaded
            by the caller): their pretraining phase is skipped (``compare_models`` passes the
            experts of the uni-modal and inter models it trained first).
        optimizer: a factory ``params -> torch.optim.Optimizer``, e.g.
            ``functools.partial(torch.optim.SGD, lr=0.01, weight_decay=1e-4)``; each phase
            gets a fresh one. Default: Adam with lr 1e-3.
        monitor: validation metric for early stopping and model selection ("loss",
            "accuracy", "auroc", "auprc", "vqa_score", ...); lower is better for loss, nll, ece.
        patience: stop a phase after this many epochs without improvement (None: never).
        restore_best: end each phase with the weights of its best validation epoch.
        loss_weight: per-class (categorical) or per-label positive (bernoulli) loss weight.
        checkpoint_dir: where ``last.pt`` (to resume) and ``model.pt`` (the final
            state_dict) go. An existing run there is never overwritten: pass ``resume=True``.
            Files there that fit did not write (a ``model.pt`` without fit's ``last.pt``
            recording it) are refused, never overwritten. A disk without room for about one
            checkpoint (``checkpoint_bytes``) is refused before training; a write that fails
            anyway fails naming the file, leaving the previous checkpoint whole.
        resume: continue the run in ``checkpoint_dir``. Its ``last.pt`` records what made it
            (parameter names and shapes, regime and phases, epochs, pretrain_epochs, batch
            size, optimizer settings, seed, monitor, patience, clip_grad_norm, package version);
            a checkpoint of anything else (another regime, other epochs, other widths), or an
            unreadable one, is refused in one line saying what differs. Without ``last.pt``
            training starts afresh.
        feature_cache: with ``regime="frozen_backbone"`` and in-memory data, the frozen
            backbone's outputs are computed once and the heads train on them (``features.py``):
            kept in memory (True), or memory-mapped in this folder, keyed by the backbone and
            the data; False runs the backbone again every epoch.
    """
    for name, value in (("epochs", epochs), ("seed", seed), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):  # 2.5 epochs, seed "0"...
            raise TypeError(f"{name} must be a whole number, got {value!r}")
    _check_settings(epochs, seed, batch_size, valid, monitor, loss_weight, patience, clip_grad_norm, checkpoint_dir)
    phases = training_phases(model, regime, epochs, pretrain_epochs, pretrained)  # refuses pretrain_epochs below 1
    for name, data in (("train", train), ("valid", valid)):
        if data is not None:
            check_not_empty(data, name)  # else ZeroDivisionError, or an obscure sampler or torch.cat error
            given = modalities_of(data)
            if given is not None and model.backbone is None:  # else each batch is checked as it comes
                model.require_experts(given, f"{name} set")  # else a smaller model, trained or scored in silence
    make_optimizer = optimizer or (lambda params: torch.optim.Adam(params, lr=1e-3))
    distributed.init_from_env()  # under torchrun: join the process group
    run = _Run(model, train, valid, make_optimizer, batch_size, clip_grad_norm, monitor, patience, amp, seed, progress,
               device=distributed.device_for_rank(resolve_device(device)),  # resolved once, for the whole run
               directory=Path(checkpoint_dir).expanduser() if checkpoint_dir is not None else None,
               feature_cache=feature_cache)
    # a second fit writing the same checkpoints would overwrite this one's: refused at once
    with checkpoints.run_lock(run.directory) if run.directory is not None and run.main else contextlib.nullcontext():
        state = None
        if run.directory is not None:
            run.fingerprint = checkpoints.run_fingerprint(
                model, phases, regime=regime, epochs=epochs, batch_size=batch_size,
                pretrain_epochs=(epochs if pretrain_epochs is None else pretrain_epochs)
                if regime == "pretrain_finetune" else None,
                optimizer=checkpoints.optimizer_settings(make_optimizer), clip_grad_norm=clip_grad_norm, seed=seed,
                monitor=monitor, patience=patience, restore_best=restore_best, likelihood=model.likelihood.name,
                loss_weight=None if loss_weight is None else loss_weight.tolist(), amp=amp,
                train=checkpoints.data_identity(train), valid=checkpoints.data_identity(valid))
            state = checkpoints.prepare_checkpoint_dir(run.directory, resume, run.fingerprint,
                                                       checkpoints.checkpoint_bytes(model))
        model.to(run.device)
        run.weight = None if loss_weight is None else loss_weight.to(run.device)
        start_phase = run.start(state)
        for index, phase in enumerate(phases):
            if index >= start_phase:
                run.train_phase(index, phase, state if index == start_phase else None, restore_best)
                if index < len(phases) - 1:  # the next phase starts from here
                    run.save(index + 1, 0)
        run.save(len(phases), 0, final=True)
        distributed.barrier()  # every rank returns once the files are written
        return run.result


def _check_settings(epochs, seed, batch_size, valid, monitor, loss_weight, patience, clip_grad_norm,
                    checkpoint_dir) -> None:
    """fit's settings, refused in one line before any work."""
    for name, value in (("epochs", epochs), ("seed", seed), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):  # 2.5 epochs, seed "0"...
            raise TypeError(f"{name} must be a whole number, got {value!r}")
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    if valid is None and monitor != "loss":  # it would be ignored: nothing to select on
        raise ValueError(f"monitor={monitor!r} needs a validation set; pass valid, or leave monitor as 'loss'")
    if loss_weight is not None and not (torch.isfinite(loss_weight).all() and (loss_weight >= 0).all()):
        raise ValueError(f"loss_weight must hold finite, non-negative weights, got {loss_weight.tolist()}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if patience is not None and valid is None:
        raise ValueError("patience (early stopping) needs a validation set: pass valid")
    if patience is not None and patience < 1:  # 0 would stop every phase before its first epoch
        raise ValueError(f"patience must be at least 1 (or None), got {patience}")
    if clip_grad_norm is not None and not clip_grad_norm > 0:  # 0 zeroes every gradient: no training
        raise ValueError(f"clip_grad_norm must be positive (or None), got {clip_grad_norm}")
    if checkpoint_dir is not None and not str(checkpoint_dir).strip():  # "" would be the working folder
        raise ValueError("checkpoint_dir is an empty path; name a folder (or None for no checkpoints)")


@dataclass
class _Run:
    """One call of fit: what its phases share."""

    model: I2M2
    train: Dataset | DataLoader
    valid: Dataset | DataLoader | None
    make_optimizer: Callable
    batch_size: int
    clip_grad_norm: float | None
    monitor: str
    patience: int | None
    amp: bool
    seed: int
    progress: bool
    device: torch.device
    directory: Path | None
    feature_cache: bool | str | os.PathLike = True
    fingerprint: dict | None = None
    weight: torch.Tensor | None = None
    result: FitResult = field(default_factory=FitResult)
    main: bool = field(default_factory=distributed.is_main)  # checkpoints and progress bars from rank 0 only
    started: float = field(default_factory=time.perf_counter)
    trained_until: float = 0.0

    def start(self, state: dict | None) -> int:
        """From a checkpoint's state, or afresh; returns the phase to start at."""
        if state is None:
            torch.manual_seed(self.seed)
            return 0
        self.model.load_state_dict(state["model"])
        self.result = FitResult(list(state["history"]), dict(state["best_metrics"]), state["best_epoch"])
        torch.set_rng_state(state["rng"])
        if self.device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        return state["phase"]

    def train_phase(self, index: int, phase: Phase, state: dict | None, restore_best: bool) -> None:
        train, valid = self.train, self.valid
        if phase.frozen is not None:
            phase.frozen.requires_grad_(False)
            if phase.frozen is phase.model.backbone and self.feature_cache is not False and all(
                    d is None or isinstance(d, TensorData) for d in (train, valid)):
                phase, train, valid = self.on_features(phase)  # the backbone runs once, not every epoch
        net = phase.model
        forward = net  # DDP averages the gradients of the ranks during backward
        if distributed.active():
            ids = [self.device.index] if self.device.type == "cuda" else None
            forward = torch.nn.parallel.DistributedDataParallel(net, device_ids=ids)
        opt = self.make_optimizer([p for p in net.parameters() if p.requires_grad])
        use_fp16 = self.amp and self.device.type == "cuda" and not torch.cuda.is_bf16_supported()
        scaler = torch.amp.GradScaler(self.device.type, enabled=use_fp16)
        selection, first_epoch = Selection(self.monitor), 0
        if state is not None:  # resumed within this phase
            first_epoch = state["epoch"]
            if state["optimizer"] is not None:
                opt.load_state_dict(state["optimizer"])
                scaler.load_state_dict(state["scaler"])
            selection = Selection(self.monitor, **state["selection"])
        self.trained_until = time.perf_counter() - self.started
        if phase.from_trained and self.valid is not None and first_epoch == 0:
            # fine-tuning can only make pretrained experts worse on validation: keep that option
            self.validate(net, selection, {"phase": phase.name, "epoch": 0, "train_loss": None}, valid)
        bar = tqdm(range(first_epoch, phase.epochs), desc=phase.name, disable=not self.progress or not self.main,
                   initial=first_epoch, total=phase.epochs)
        for epoch in bar:
            if self.patience is not None and selection.bad_epochs >= self.patience:
                break
            row = {"phase": phase.name, "epoch": epoch + 1,
                   "train_loss": self.train_epoch(index, phase, epoch, forward, opt, scaler, train)}
            self.trained_until = time.perf_counter() - self.started
            if valid is not None:
                self.validate(net, selection, row, valid)
                bar.set_postfix(train_loss=f"{row['train_loss']:.4f}",
                                **{self.monitor: f"{row['valid_' + self.monitor]:.4f}"})
            else:
                self.result.best_epoch = epoch + 1
                self.result.history.append(row)
                self.result.elapsed.append(self.trained_until)
            self.save(index, epoch + 1, opt, scaler, selection)
        if restore_best and selection.best_state is not None:
            self.model.load_state_dict(selection.best_state)

    def on_features(self, phase: Phase) -> tuple[Phase, TensorData, TensorData | None]:
        """The phase's heads on the frozen backbone's kept outputs, and the data as those outputs."""
        kept = [None if data is None else cached_features(phase.frozen, data, self.device, self.amp, self.feature_cache,
                                                         progress=self.progress and self.main, name=name)
                for name, data in (("train", self.train), ("valid", self.valid))]
        heads = heads_on_features(phase.model, sorted(kept[0].inputs))
        return Phase(phase.name, heads, phase.epochs, from_trained=phase.from_trained), kept[0], kept[1]

    def train_epoch(self, index: int, phase: Phase, epoch: int, forward, opt, scaler, train) -> float:
        """One epoch of steps over ``train``; the mean training loss (over ranks too)."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index * 10_007 + epoch)
        loader = make_loader(train, self.batch_size, shuffle=True, generator=generator)
        phase.model.train()
        if phase.frozen is not None:
            phase.frozen.eval()
        # summed where the loss is, in float64 as a Python float would be (MPS has no float64)
        total = torch.zeros((), dtype=torch.float32 if self.device.type == "mps" else torch.float64, device=self.device)
        first_bad = torch.full((), -1, device=self.device)  # the first step whose loss is not finite
        count, step = 0, -1
        for step, (inputs, target) in enumerate(tqdm(loader, desc=f"epoch {epoch + 1}", leave=False,
                                                     disable=not self.progress or not self.main)):
            target = target.to(self.device, non_blocking=True)
            scale = 1.0
            if distributed.active():  # this rank's share of the global batch's mean loss
                global_size = min(self.batch_size, len(train) - step * self.batch_size)
                scale = distributed.loss_scale(len(target), global_size)
            loss = train_step(forward, to_device(inputs, self.device), target, opt, loss_of=phase.model.loss,
                              scaler=scaler, loss_weight=self.weight, clip_grad_norm=self.clip_grad_norm,
                              amp=self.amp, loss_scale=scale)
            total += loss.to(total.dtype) * len(target)
            first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss), step, first_bad)
            count += len(target)
            if (step + 1) % LOG_EVERY == 0:
                self.check_finite(first_bad, total, count, phase, epoch)
        self.check_finite(first_bad, total, count, phase, epoch)
        total, count = distributed.sum_over_ranks([float(total), count])
        if count == 0:  # an iterable data set that gave nothing: else a division by zero
            raise ValueError(f"train holds no examples (its loader gave no batch in phase {phase.name!r}, "
                             f"epoch {epoch + 1})")
        return total / count

    @staticmethod
    def check_finite(first_bad: torch.Tensor, total: torch.Tensor, count: int, phase: Phase, epoch: int) -> None:
        step = int(first_bad)  # the one host synchronisation of LOG_EVERY steps
        if step >= 0:
            raise FloatingPointError(
                f"training loss became {float(total)} in phase {phase.name!r}, epoch {epoch + 1}, step "
                f"{step + 1}: check the inputs for NaN/inf or lower the learning rate")

    def validate(self, net: I2M2, selection: Selection, row: dict[str, Any], valid) -> None:
        metrics = evaluate(net, valid, device=self.device, loss_weight=self.weight, amp=self.amp, name="valid",
                           strict=True)
        if self.monitor not in metrics:
            raise KeyError(f"monitor={self.monitor!r} is not a validation metric here; "
                           f"choose one of {sorted(metrics)}")
        row.update({f"valid_{k}": v for k, v in metrics.items()})
        if selection.update(metrics[self.monitor], row["epoch"], self.model):
            self.result.best, self.result.best_epoch = metrics, row["epoch"]
        self.result.history.append(row)
        self.result.elapsed.append(self.trained_until)

    def save(self, phase: int, epoch: int, opt=None, scaler=None, selection: Selection | None = None,
             final: bool = False) -> None:
        """The checkpoint after an epoch (optimizer and selection state), or between phases."""
        if self.directory is None or not self.main:
            return
        state = checkpoints.checkpoint(self.model, opt, scaler, phase, epoch, self.result,
                                       selection or Selection(self.monitor), self.device, self.fingerprint)
        if final:
            checkpoints.save_final(self.model, state, self.directory)
        else:
            checkpoints.save_atomic(state, self.directory / "last.pt")
