"""The one training loop: every benchmark, every model, every regime of the published code.

Regimes:

* ``"joint"``: all experts trained together from scratch on the one loss of the combined
  output (MIMIC-III, fastMRI).
* ``"pretrain_finetune"``: each expert is first trained alone (its own uni-modal or
  inter-modality model, a view sharing its parameters), then all are fine-tuned jointly
  (AV-MNIST).
* ``"finetune"``: the fine-tuning phase alone, from experts already trained (the published
  AV-MNIST code loads the checkpoints of its uni-modal and late-fusion runs this way).
* ``"frozen_backbone"``: the model's shared backbone is frozen and only the experts, the
  heads, are trained (VQA, NLVR2).

A checkpoint (``state_dict``s, RNG state, history; written atomically) is saved after every
epoch; ``resume=True`` continues from it to the same result as an uninterrupted run: the
shuffling of each epoch is seeded from (seed, phase, epoch) and the RNG state that dropout
draws from is restored. Each checkpoint records a fingerprint of the run that made it (every
parameter's name and shape, the phases, the schedule and optimizer settings, the package
version): a checkpoint of another run is refused, not resumed into something else.
"""

from __future__ import annotations

import contextlib
import itertools
import numbers
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler
from tqdm.auto import tqdm

from . import checkpoints, distributed
from .experts import I2M2, MissingModalityError, log_probs
from .metrics import evaluate_probs

REGIMES = ("joint", "pretrain_finetune", "finetune", "frozen_backbone")
LOWER_IS_BETTER = ("loss", "nll", "ece")


class TensorData(Dataset):
    """In-memory multi-modal data: ``{modality: (N, ...)}`` and targets ``(N, ...)``.

    Indexing with a list of indices returns a whole batch, so the loader slices tensors
    instead of collating N single examples.
    """

    def __init__(self, inputs: Mapping[str, torch.Tensor], targets: torch.Tensor):
        for name, x in {**inputs, "targets": targets}.items():
            if not isinstance(x, torch.Tensor) or x.ndim == 0:  # numpy arrays fail later, obscurely
                raise TypeError(f"{name!r} must be a torch.Tensor with a batch dimension, got {type(x).__name__}"
                                + (" of no dimension" if isinstance(x, torch.Tensor) else ""))
        n = len(targets)
        for name, x in inputs.items():
            if len(x) != n:
                raise ValueError(f"modality {name!r} has {len(x)} examples but there are {n} targets")
            if x.is_floating_point() and not torch.isfinite(x).all():  # no silent NaNs in training
                bad = int((~torch.isfinite(x.reshape(n, -1))).any(1).nonzero()[0])
                raise ValueError(f"modality {name!r}: example {bad} holds NaN or infinite values")
        self.inputs = dict(inputs)
        self.targets = targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index):
        return {k: v[index] for k, v in self.inputs.items()}, self.targets[index]


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


def make_loader(data: Dataset | DataLoader, batch_size: int, shuffle: bool = False,
                generator: torch.Generator | None = None, shard: bool = True) -> DataLoader:
    """Batches of ``(inputs dict, targets)``. A DataLoader given by the user is used as is.

    Under torchrun (and ``shard``) each rank gets its share of every global batch.
    """
    if isinstance(data, DataLoader):
        if shard and distributed.active():
            raise ValueError("under torchrun pass a dataset, not a DataLoader: fit splits each batch between ranks")
        return data
    order = RandomSampler(data, generator=generator) if shuffle else SequentialSampler(data)
    batches = BatchSampler(order, batch_size, drop_last=False)
    if shard and distributed.active():
        batches = distributed.RankShard(batches, distributed.rank(), distributed.world_size())
    if isinstance(data, TensorData):  # the dataset slices whole batches: no per-example collate
        return DataLoader(data, sampler=batches, batch_size=None)
    return DataLoader(data, batch_sampler=batches)


def _modalities_of(data) -> set[str] | None:
    """The modalities a data set gives, known before training (one example read), or None
    where only its batches tell (a DataLoader, whose collate may change them; an iterable)."""
    while isinstance(data, torch.utils.data.Subset):
        data = data.dataset
    if isinstance(data, TensorData):
        return set(data.inputs)
    if isinstance(data, DataLoader) or isinstance(data, torch.utils.data.IterableDataset):
        return None
    try:
        inputs = data[0][0]
    except (IndexError, KeyError, TypeError):
        return None
    return set(inputs) if isinstance(inputs, Mapping) else None


def _local_part(data: Dataset) -> Dataset:
    """This rank's contiguous block of ``data`` for evaluation (all of it in one process)."""
    if not distributed.active():
        return data
    rows = distributed.contiguous_range(len(data))
    if isinstance(data, TensorData):
        block = slice(rows.start, rows.stop)
        return TensorData({k: v[block] for k, v in data.inputs.items()}, data.targets[block])
    return torch.utils.data.Subset(data, list(rows))


def _to(batch_inputs: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch_inputs.items()}


def _autocast(device: torch.device, amp: bool):
    # Mixed precision on CUDA only: bfloat16 where supported (no loss scaling needed).
    enabled = amp and device.type == "cuda"
    dtype = torch.bfloat16 if enabled and torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device.type, dtype=dtype, enabled=enabled)


@dataclass
class Predictions:
    """Everything a model said about a dataset, on the CPU."""

    logits: torch.Tensor
    expert_logits: dict[str, torch.Tensor]
    targets: torch.Tensor
    head: str

    @property
    def probs(self) -> torch.Tensor:
        # float64 so that each row sums to one to within rounding
        return log_probs(self.logits.double(), self.head).exp()


def _check_not_empty(data, name: str) -> None:
    """An empty data set fails here, named, not as a division by zero or torch.cat's error."""
    try:
        n = len(data)  # a DataLoader's length is its number of batches
    except TypeError:  # an iterable data set: its batches are counted as they come
        return
    if n == 0:
        raise ValueError(f"{name} holds no examples"
                         + (" (an empty DataLoader)" if isinstance(data, DataLoader) else " (an empty data set)"))


@torch.no_grad()
def predict(model: I2M2, data, batch_size: int = 512, device: str | torch.device = "auto",
            amp: bool = True, progress: bool = False, *, name: str = "data", strict: bool = False) -> Predictions:
    """The model's logits for ``data`` (under torchrun: each rank predicts a block and every
    rank gets the whole, in order; call it on every rank).

    ``name`` names the data in errors (an empty set); with ``strict`` every expert must run:
    data lacking a modality an expert reads are refused instead of scoring a smaller model."""
    _check_not_empty(data, name)
    device = distributed.device_for_rank(resolve_device(device))
    was_training = model.training
    model.to(device).eval()
    logits, experts, targets = [], {}, []
    local = data if isinstance(data, DataLoader) else _local_part(data)
    for inputs, target in tqdm(make_loader(local, batch_size, shard=False), desc="predict", leave=False,
                               disable=not progress or not distributed.is_main()):
        with _autocast(device, amp):
            try:
                out = model(_to(inputs, device), strict=strict)
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
    return Predictions(*pieces, model.head)


def evaluate(model: I2M2, data, batch_size: int = 512, device: str | torch.device = "auto",
             loss_weight: torch.Tensor | None = None, amp: bool = True, *, name: str = "data",
             strict: bool = False) -> dict[str, float]:
    """The loss and every metric that fits the model's head, from probabilities (``name`` and
    ``strict`` as in ``predict``)."""
    p = predict(model, data, batch_size, device, amp, name=name, strict=strict)
    weight = None if loss_weight is None else loss_weight.cpu()
    metrics = {"loss": float(model.loss(p.logits, p.targets, weight))}
    metrics.update(evaluate_probs(p.probs.numpy(), p.targets.numpy(), model.head))
    return metrics


# ---------------------------------------------------------------------------- the loop


@dataclass
class Phase:
    name: str
    model: I2M2
    epochs: int
    start_is_candidate: bool = False  # the weights it starts from compete in model selection


def check_pretrain_epochs(pretrain_epochs: Any) -> None:
    """None: as many as ``epochs``. 0 or less is refused: neither "no pretraining" (that is
    regime="joint", or "finetune" from trained experts) nor "as many as epochs" (as 0 was read)."""
    if pretrain_epochs is not None and (isinstance(pretrain_epochs, bool) or
                                        not isinstance(pretrain_epochs, numbers.Integral) or pretrain_epochs < 1):
        raise ValueError(f"pretrain_epochs must be a whole number of at least 1, or None for as many as epochs; got "
                         f"{pretrain_epochs!r} (for no pretraining use regime='joint', or 'finetune' from trained experts)")


def training_phases(model: I2M2, regime: str, epochs: int, pretrain_epochs: int | None = None) -> list[Phase]:
    check_pretrain_epochs(pretrain_epochs)
    if regime == "pretrain_finetune":
        pre_epochs = epochs if pretrain_epochs is None else pretrain_epochs
        pre = [Phase(f"pretrain:{n}", model.subset(n), pre_epochs) for n in model.experts]
        return pre + [Phase("finetune", model, epochs, start_is_candidate=True)]
    if regime == "finetune":
        return [Phase("finetune", model, epochs, start_is_candidate=True)]
    if regime == "frozen_backbone":
        if model.backbone is None:
            raise ValueError("regime='frozen_backbone' needs a model built with a backbone")
        return [Phase("heads", model, epochs)]
    if regime == "joint":
        return [Phase("joint", model, epochs)]
    raise ValueError(f"regime must be one of {REGIMES}, got {regime!r}")


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
        optimizer: a factory ``params -> torch.optim.Optimizer``, e.g.
            ``functools.partial(torch.optim.SGD, lr=0.01, weight_decay=1e-4)``; each phase
            gets a fresh one. Default: Adam with lr 1e-3.
        monitor: validation metric for early stopping and model selection ("loss",
            "accuracy", "auroc", "auprc", "vqa_score", ...); lower is better for loss, nll, ece.
        patience: stop a phase after this many epochs without improvement (None: never).
        restore_best: end each phase with the weights of its best validation epoch.
        loss_weight: per-class (multiclass) or per-label positive (multilabel) loss weight.
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
    """
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
    phases = training_phases(model, regime, epochs, pretrain_epochs)  # refuses pretrain_epochs below 1
    for name, data in (("train", train), ("valid", valid)):
        if data is None:
            continue
        _check_not_empty(data, name)  # else ZeroDivisionError, or an obscure sampler or torch.cat error
        given = _modalities_of(data)
        if given is not None and model.backbone is None:  # else each batch is checked as it comes
            model.require_experts(given, f"{name} set")  # else a smaller model, trained or scored in silence
    make_optimizer = optimizer or (lambda params: torch.optim.Adam(params, lr=1e-3))
    distributed.init_from_env()  # under torchrun: join the process group
    device = distributed.device_for_rank(resolve_device(device))
    main = distributed.is_main()  # checkpoints and progress bars from rank 0 only
    if checkpoint_dir is not None and not str(checkpoint_dir).strip():  # "" would be the working folder
        raise ValueError("checkpoint_dir is an empty path; name a folder (or None for no checkpoints)")
    directory = Path(checkpoint_dir).expanduser() if checkpoint_dir is not None else None
    # a second fit writing the same checkpoints would overwrite this one's: refused at once
    with checkpoints.run_lock(directory) if directory is not None and main else contextlib.nullcontext():
        state = None
        if directory is not None:
            fingerprint = checkpoints.run_fingerprint(
                model, phases, regime=regime, epochs=epochs, batch_size=batch_size,
                pretrain_epochs=phases[0].epochs if regime == "pretrain_finetune" else None,
                optimizer=checkpoints.optimizer_settings(make_optimizer), clip_grad_norm=clip_grad_norm, seed=seed,
                monitor=monitor, patience=patience, restore_best=restore_best, head=model.head,
                loss_weight=None if loss_weight is None else loss_weight.tolist(), amp=amp,
            train=checkpoints.data_identity(train), valid=checkpoints.data_identity(valid))
            state = checkpoints.prepare_checkpoint_dir(directory, resume, fingerprint, checkpoints.checkpoint_bytes(model))

        model.to(device)
        if regime == "frozen_backbone":
            model.backbone.requires_grad_(False)
        weight = None if loss_weight is None else loss_weight.to(device)
        use_fp16 = amp and device.type == "cuda" and not torch.cuda.is_bf16_supported()

        result = FitResult()
        start_phase, start_epoch, started = 0, 0, time.perf_counter()
        if state is not None:
            model.load_state_dict(state["model"])
            result = FitResult(list(state["history"]), dict(state["best_metrics"]), state["best_epoch"])
            start_phase, start_epoch = state["phase"], state["epoch"]
            torch.set_rng_state(state["rng"])
            if device.type == "cuda" and state.get("cuda_rng") is not None:
                torch.cuda.set_rng_state_all(state["cuda_rng"])
        else:
            torch.manual_seed(seed)

        for phase_index, phase in enumerate(phases):
            if phase_index < start_phase:
                continue
            net = phase.model
            params = [p for p in net.parameters() if p.requires_grad]
            # DDP averages the gradients of the ranks during backward
            forward = net
            if distributed.active():
                ids = [device.index] if device.type == "cuda" else None
                forward = torch.nn.parallel.DistributedDataParallel(net, device_ids=ids)
            opt = make_optimizer(params)
            scaler = torch.amp.GradScaler(device.type, enabled=use_fp16)
            selection = Selection(monitor)
            first_epoch = 0
            if state is not None and phase_index == start_phase:
                first_epoch = start_epoch
                if state["optimizer"] is not None:
                    opt.load_state_dict(state["optimizer"])
                    scaler.load_state_dict(state["scaler"])
                selection = Selection(monitor, **state["selection"])

            def validate(epoch: int, row: dict[str, Any]) -> None:
                metrics = evaluate(net, valid, device=device, loss_weight=weight, amp=amp, name="valid", strict=True)
                if monitor not in metrics:
                    raise KeyError(f"monitor={monitor!r} is not a validation metric here; "
                                   f"choose one of {sorted(metrics)}")
                row.update({f"valid_{k}": v for k, v in metrics.items()})
                if selection.update(metrics[monitor], epoch, model):
                    result.best, result.best_epoch = metrics, epoch
                result.history.append(row)
                result.elapsed.append(trained_until)

            trained_until = time.perf_counter() - started
            if phase.start_is_candidate and valid is not None and first_epoch == 0:
                # fine-tuning can only make pretrained experts worse on validation: keep that option
                validate(0, {"phase": phase.name, "epoch": 0, "train_loss": None})

            epoch_bar = tqdm(range(first_epoch, phase.epochs), desc=phase.name, disable=not progress or not main,
                             initial=first_epoch, total=phase.epochs)
            for epoch in epoch_bar:
                if patience is not None and selection.bad_epochs >= patience:
                    break
                generator = torch.Generator().manual_seed(seed * 1_000_003 + phase_index * 10_007 + epoch)
                loader = make_loader(train, batch_size, shuffle=True, generator=generator)
                net.train()
                if regime == "frozen_backbone":
                    net.backbone.eval()
                total, count = 0.0, 0
                for step, (inputs, target) in enumerate(tqdm(loader, desc=f"epoch {epoch + 1}", leave=False,
                                                             disable=not progress or not main)):
                    target = target.to(device, non_blocking=True)
                    with _autocast(device, amp):
                        try:  # a modality missing from a batch would drop its experts in silence
                            out = forward(_to(inputs, device), strict=True)
                        except MissingModalityError as e:
                            raise MissingModalityError(f"train set: {e}") from None
                    loss = net.loss(out.logits.float(), target, weight)
                    if not torch.isfinite(loss):
                        raise FloatingPointError(
                            f"training loss became {loss.item()} in phase {phase.name!r}, epoch "
                            f"{epoch + 1}, step {step + 1}: check the inputs for NaN/inf or lower the learning rate"
                        )
                    opt.zero_grad(set_to_none=True)
                    if distributed.active():  # this rank's share of the global batch's mean loss
                        global_size = min(batch_size, len(train) - step * batch_size)
                        scaler.scale(loss * distributed.loss_scale(len(target), global_size)).backward()
                    else:
                        scaler.scale(loss).backward()
                    if clip_grad_norm is not None:
                        scaler.unscale_(opt)
                        torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)
                    scaler.step(opt)
                    scaler.update()
                    total += loss.item() * len(target)
                    count += len(target)

                total, count = distributed.sum_over_ranks([total, count])
                if count == 0:  # an iterable data set that gave nothing: else a division by zero
                    raise ValueError(f"train holds no examples (its loader gave no batch in phase {phase.name!r}, "
                                     f"epoch {epoch + 1})")
                trained_until = time.perf_counter() - started
                row: dict[str, Any] = {"phase": phase.name, "epoch": epoch + 1, "train_loss": total / count}
                if valid is not None:
                    validate(epoch + 1, row)
                    epoch_bar.set_postfix(train_loss=f"{row['train_loss']:.4f}",
                                          **{monitor: f"{row['valid_' + monitor]:.4f}"})
                else:
                    result.best_epoch = epoch + 1
                    result.history.append(row)
                    result.elapsed.append(trained_until)
                if directory is not None and main:
                    checkpoints.save_atomic(checkpoints.checkpoint(model, opt, scaler, phase_index, epoch + 1, result, selection, device,
                                            fingerprint), directory / "last.pt")

            if restore_best and selection.best_state is not None:
                model.load_state_dict(selection.best_state)
            if directory is not None and main and phase_index < len(phases) - 1:  # the next phase starts from here
                checkpoints.save_atomic(checkpoints.checkpoint(model, None, None, phase_index + 1, 0, result,
                                                               Selection(monitor), device, fingerprint), directory / "last.pt")
        if directory is not None and main:
            checkpoints.save_final(model, checkpoints.checkpoint(model, None, None, len(phases), 0, result,
                                                                 Selection(monitor), device, fingerprint), directory)
        distributed.barrier()  # every rank returns once the files are written
        return result


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


def compare_models(
    build_model: Callable[[], I2M2],
    train: Dataset | DataLoader,
    valid: Dataset | DataLoader | None,
    test: Dataset | DataLoader,
    *,
    names: Iterable[str] | None = None,
    seed: int = 0,
    checkpoint_dir: str | os.PathLike | None = None,
    progress: bool = True,
    trained: dict[str, I2M2] | None = None,
    fit_results: dict[str, FitResult] | None = None,
    per_model: dict[str, dict[str, Any]] | None = None,
    weigh: bool = False,
    **fit_kwargs: Any,
) -> list[dict[str, Any]]:
    """Train every model the paper compares and score each on ``test``.

    Each of uni-modal, intra-modality, inter-modality and I2M2 (``model.baselines()``) is
    cut from a freshly built model with the same seed, so they start from the same weights,
    and trained on its own with the same ``fit`` arguments. With ``regime="pretrain_finetune"``
    the single-expert models (uni-modal, inter) are trained first, for ``pretrain_epochs``,
    and are the pretraining of the others, which start from their weights and are fine-tuned
    (``train_seconds`` then includes that pretraining). Returns one row per model; if a
    ``trained`` dict is given, the trained models are put in it by name, and if a
    ``fit_results`` dict is given, each model's ``FitResult``. ``per_model`` maps a
    model's name to ``fit`` arguments that replace the shared ones for it (a published recipe
    may train each model at its own learning rate). ``weigh``: one more row, ``"i2m2
    (weighted)"``: the experts as trained alone (in the uni-modal and inter models, so no
    more training) in a product whose exponents are fitted on ``valid`` (``weights.py``),
    and ``"i2m2 (selected)"``: whichever of it and the published I2M2 scores better on
    ``valid`` by the ``monitor`` (the row says which).
    """
    views = build_model().baselines()  # which models there are, and how many experts each has
    names = list(names) if names is not None else list(views)
    for argument, given in (("names", names), ("per_model", per_model or {})):
        unknown = set(given) - set(views)
        if unknown:
            raise ValueError(f"{argument} names {sorted(unknown)}, not among the models {list(views)}")
    device = fit_kwargs.get("device", "auto")
    staged = fit_kwargs.get("regime") == "pretrain_finetune"
    order = names
    if staged:  # single-expert models first: they are the pretraining of the others
        order = sorted(names, key=lambda name: len(views[name].experts) > 1)
    pretrained: dict[str, tuple[I2M2, float]] = {}  # expert name -> (its trained model, seconds)
    rows, models = {}, {}
    for name in tqdm(order, desc="models", disable=not progress):
        torch.manual_seed(seed)
        model = build_model().baselines()[name]
        directory = None if checkpoint_dir is None else Path(checkpoint_dir) / name.replace(":", "-")
        kwargs, seconds = {**fit_kwargs, **(per_model or {}).get(name, {})}, 0.0
        if staged and len(model.experts) == 1:
            # an expert trained alone is its own pretraining: pretrain_epochs of it, no fine-tune
            kwargs["regime"] = "joint"
            check_pretrain_epochs(kwargs.get("pretrain_epochs"))  # else 0 would be refused as "epochs"
            if kwargs.get("pretrain_epochs") is not None:
                kwargs["epochs"] = kwargs["pretrain_epochs"]
        elif staged and all(n in pretrained for n in model.experts):
            # as published: start from the experts' own trained runs, then fine-tune together
            for n, expert in model.experts.items():
                expert.load_state_dict(pretrained[n][0].experts[n].state_dict())
                seconds += pretrained[n][1]
            kwargs.update(regime="finetune")
        started = time.perf_counter()
        # one bar over the models; a bar per epoch of each would bury it
        result = fit(model, train, valid, seed=seed, checkpoint_dir=directory, progress=False, **kwargs)
        seconds += time.perf_counter() - started
        if staged and len(model.experts) == 1:
            pretrained[next(iter(model.experts))] = (model, seconds)
        models[name] = model
        if fit_results is not None:  # each run's history (and its wall time per epoch)
            fit_results[name] = result
        rows[name] = {"model": name, **evaluate(model, test, device=device, name="test"),
                      "best_epoch": result.best_epoch, "train_seconds": seconds}
    if trained is not None:
        trained.update(models)
    if weigh:
        from .weights import weighted_from_experts

        # each expert from the smallest trained model holding it: the experts trained alone
        holders = {e: min((n for n in models if e in models[n].experts), key=lambda n: len(models[n].experts))
                   for e in views["i2m2"].experts if any(e in m.experts for m in models.values())}
        if set(holders) != set(views["i2m2"].experts) or any(len(models[n].experts) == len(views["i2m2"].experts)
                                                           for n in holders.values()):
            raise ValueError("weigh=True weighs the experts as trained alone: names must include the "
                             f"uni-modal and inter models (got {names})")
        torch.manual_seed(seed)
        model, weights = weighted_from_experts(build_model, {e: models[n] for e, n in holders.items()}, valid,
                                               device=device)
        if trained is not None:
            trained["i2m2 (weighted)"] = model
        rows["i2m2 (weighted)"] = {"model": "i2m2 (weighted)", **evaluate(model, test, device=device, name="test"),
                                   "best_epoch": None, "weights": weights,
                                   "train_seconds": sum(rows[n]["train_seconds"] for n in set(holders.values()))}
        names = [*names, "i2m2 (weighted)"]
        if "i2m2" in models:  # the better of the two products on validation: where fine-tuning them together
            monitor = fit_kwargs.get("monitor", "loss")  # pays (AV-MNIST) the published one, else the weighted
            scores = {n: evaluate(models.get(n, model), valid, device=device, name="valid")[monitor]
                      for n in ("i2m2", "i2m2 (weighted)")}
            chosen = (min if monitor in LOWER_IS_BETTER else max)(scores, key=scores.get)
            if trained is not None:
                trained["i2m2 (selected)"] = trained[chosen]
            rows["i2m2 (selected)"] = {**rows[chosen], "model": "i2m2 (selected)", "selected": chosen,
                                       "train_seconds": rows["i2m2"]["train_seconds"]
                                       + rows["i2m2 (weighted)"]["train_seconds"]}
            names = [*names, "i2m2 (selected)"]
    return [rows[name] for name in names]


def compare_across_seeds(
    build_model: Callable[[], I2M2],
    train: Dataset | DataLoader,
    valid: Dataset | DataLoader | None,
    test: Dataset | DataLoader,
    seeds: Iterable[int],
    **kwargs: Any,
) -> tuple[list[dict[str, Any]], list[dict[str, I2M2]]]:
    """``compare_models`` once per seed. Returns one row per model with every metric's mean
    over the seeds where it is defined (and ``<metric>_std``, ``<metric>_runs``), and the
    trained models of each seed."""
    seeds = list(seeds)
    runs, trained_per_seed = [], []
    for seed in seeds:
        trained: dict[str, I2M2] = {}
        runs.append(compare_models(build_model, train, valid, test, seed=seed, trained=trained, **kwargs))
        trained_per_seed.append(trained)
    summary = []
    for i, name in enumerate(r["model"] for r in runs[0]):
        row: dict[str, Any] = {"model": name, "seeds": seeds}
        for metric in runs[0][i]:
            values = [rows[i][metric] for rows in runs if isinstance(rows[i].get(metric), (int, float))]
            if metric != "model" and values:
                row[metric] = float(np.mean(values))
                row[f"{metric}_std"] = float(np.std(values))
                row[f"{metric}_runs"] = values
        summary.append(row)
    return summary, trained_per_seed


def evaluate_missing(model: I2M2, data: TensorData, **kwargs: Any) -> list[dict[str, Any]]:
    """The model's test metrics with every subset of its modalities present (the experts that
    read an absent modality drop out); one row per subset that leaves an expert to run."""
    rows = []
    for r in range(len(model.modalities), 0, -1):
        for kept in itertools.combinations(model.modalities, r):
            if not any(set(e.reads) <= set(kept) for e in model.experts.values()):
                continue
            subset = TensorData({m: data.inputs[m] for m in kept}, data.targets)
            rows.append({"modalities": " + ".join(kept), **evaluate(model, subset, **kwargs)})
    return rows


def evaluate_noised(model: I2M2, data: TensorData, modality: str, levels: Iterable[float],
                    seed: int = 0, **kwargs: Any) -> list[dict[str, Any]]:
    """The model's test metrics with Gaussian noise added to one modality at test time.

    The noise's standard deviation is ``level`` times the modality's own (over ``data``), so
    levels mean the same for every modality; one row per level, the same noise draw for every
    model evaluated with the same seed.
    """
    if modality not in data.inputs:
        raise KeyError(f"modality {modality!r} is not in the data; it has {sorted(data.inputs)}")
    x = data.inputs[modality]
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype).to(x.device)
    noise *= x.float().std().to(x.dtype)  # in units of the modality's own spread, computed once
    rows = []
    for level in levels:
        noised = TensorData({**data.inputs, modality: x + level * noise}, data.targets)
        rows.append({"noised": modality, "noise": float(level), **evaluate(model, noised, **kwargs)})
    return rows
