"""Checkpoints of ``fit``: state dicts written atomically, with a fingerprint of the run that
made them, so that a checkpoint is resumed only into the very run it belongs to.

A checkpoint (``last.pt``) holds the model's and optimizer's state dicts, the RNG state, the
history, and the fingerprint: every parameter's name and shape, the phases, the schedule and
optimizer settings, the package version. Resuming a checkpoint of anything else (another
regime, other epochs, other widths) is refused in one line saying what differs; an unreadable
one is named; files ``fit`` did not write are never overwritten; a disk that cannot hold one
checkpoint is refused before training.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pickle
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

from . import distributed
from .experts import I2M2
from .io import atomic_path, check_free_space, fingerprint_differences

CHECKPOINT_FORMAT = 2  # 2: with the fingerprint of the run that made it


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed: unreadable, not fit's, or made by another run."""


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save to a temporary name beside ``path``, then rename: never half-written."""
    _write_atomic(path, lambda tmp: torch.save(obj, tmp))


def _write_atomic(path: Path, write: Callable[[Path], Any]) -> None:
    # A full disk mid-write fails in one line naming the file (torch says only "unexpected pos
    # 576 vs 534"); atomic_path removes the partial temporary file, the old one stays whole.
    try:
        with atomic_path(path) as tmp:
            write(tmp)
    except (OSError, RuntimeError) as e:
        free = shutil.disk_usage(path.parent).free if path.parent.is_dir() else 0
        reason = e.strerror if isinstance(e, OSError) and e.strerror else f"torch: {str(e).splitlines()[0][:160]}"
        raise OSError(f"cannot write {path} ({free / 2**20:,.1f} MiB free there; {reason}): nothing half-written "
                      f"is left; free some space, then pass resume=True to continue from the last checkpoint") from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def optimizer_settings(factory: Callable) -> Any:
    """What an optimizer factory makes: its class and plain settings (lr, momentum, ...), from
    one made for a stand-in parameter; a factory that needs the real ones is named only."""
    try:
        opt = factory([torch.nn.Parameter(torch.zeros(1))])
    except Exception:  # e.g. parameter groups by name: fit still calls it on the real parameters
        return getattr(factory, "__qualname__", None) or repr(factory)
    plain = (bool, int, float, str, type(None))
    return {"type": type(opt).__name__, **{k: v for k, v in opt.defaults.items() if isinstance(v, plain)
                                           or isinstance(v, tuple) and all(isinstance(x, plain) for x in v)}}


def run_fingerprint(model: I2M2, phases: list, **settings: Any) -> dict[str, Any]:
    """What a checkpoint was made by: every state_dict entry's name and shape, the phases, the
    schedule and optimizer settings, the package version. Plain JSON values, so that a
    fingerprint read back from a checkpoint compares equal to one computed now."""
    from . import __version__

    return json.loads(json.dumps({
        "version": __version__,
        "parameters": {k: list(v.shape) for k, v in model.state_dict().items()},
        "phases": [[p.name, p.epochs] for p in phases],
        "settings": settings,
    }, default=str))


def _parameters_said(stored: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """A model's parameters in short, for ``io.fingerprint_differences``: the first differing
    shapes, and those only one side has."""
    a, b = stored.get("parameters", {}), wanted.get("parameters", {})
    out = []
    shapes = [f"{k} {tuple(a[k])} -> {tuple(b[k])}" for k in b if k in a and a[k] != b[k]]
    for what, items in (("parameter shapes", shapes), ("parameters only in the checkpoint", [k for k in a if k not in b]),
                        ("parameters only in the model", [k for k in b if k not in a])):
        if items:
            out.append(f"{what}: {', '.join(items[:3])}" + (f" and {len(items) - 3} more" if len(items) > 3 else ""))
    return out


def load_checkpoint(last: Path, fingerprint: dict[str, Any]) -> dict:
    """The state in ``last``, if it is fit's own checkpoint of this very run; else one line."""
    fresh = f"delete {last.parent} or pass another checkpoint_dir to start afresh"
    try:
        state = torch.load(last, map_location="cpu", weights_only=True)
    except (OSError, EOFError, RuntimeError, ValueError, pickle.UnpicklingError) as e:  # truncated, empty, foreign
        reason = "an empty file" if last.is_file() and last.stat().st_size == 0 else \
            f"{type(e).__name__}: {(str(e).split('. ')[0].splitlines() or [''])[0][:120]}"
        raise CheckpointError(f"{last} is unreadable or truncated ({reason}); {fresh}") from None
    if not isinstance(state, dict) or "format" not in state:
        raise CheckpointError(f"{last} is not a checkpoint written by i2m2kit's fit; {fresh}")
    if state["format"] != CHECKPOINT_FORMAT or "fingerprint" not in state:
        raise CheckpointError(f"{last} is a checkpoint of format {state['format']}, without the record of the run "
                              f"that made it (this i2m2kit writes format {CHECKPOINT_FORMAT}); {fresh}")
    # the phases follow from the settings: said only when nothing else differs
    differences = fingerprint_differences(state["fingerprint"], fingerprint, {"parameters": _parameters_said},
                                          implied=["phases"])
    if differences:  # resuming it would skip phases, train nothing, or fail in load_state_dict
        raise CheckpointError(f"{last} was made by another run, not resuming it (checkpoint -> this call: "
                              f"{'; '.join(differences)}); {fresh}")
    return state


def checkpoint_bytes(model: torch.nn.Module) -> int:
    """About the disk one checkpoint needs: the model's parameters and buffers, times 3 for the
    optimizer's state and the temporary copy while the atomic replace runs."""
    return 3 * sum(t.numel() * t.element_size() for t in model.state_dict().values())


def prepare_checkpoint_dir(directory: Path, resume: bool, fingerprint: dict[str, Any], need: int) -> dict | None:
    """Check the directory before any training; return the state to resume from, if any.
    Rank 0 alone checks and writes (under torchrun); every rank reads the state."""
    last, final = directory / "last.pt", directory / "model.pt"
    if distributed.is_main():
        if last.exists() and not resume:
            raise FileExistsError(
                f"{last} holds an earlier training run; pass resume=True to continue it, "
                f"or delete {directory} or choose another checkpoint_dir"
            )
        if final.exists() and not last.exists():  # fit writes model.pt only beside its own last.pt
            raise FileExistsError(f"{final} was not written by fit (no last.pt beside it), and fit would overwrite "
                                  f"it: move it away or choose another checkpoint_dir")
        # a disk that cannot hold one checkpoint fails now, not after an epoch in torch's words
        check_free_space(directory, need, f"a checkpoint of this model ({need:,} bytes)")
        try:  # an unwritable location fails now, not after the first epoch
            directory.mkdir(parents=True, exist_ok=True)
            probe = directory / f".write-test-{os.getpid()}"
            probe.write_bytes(b"0" * 4096)
            probe.unlink()
        except OSError as e:
            raise OSError(f"cannot write checkpoints to {directory}: {e.strerror or e}") from e
    distributed.barrier()
    if not (resume and last.exists()):
        return None
    state = load_checkpoint(last, fingerprint)
    # fit's model.pt is the one whose digest its last.pt records; anything else is someone's file
    if distributed.is_main() and final.exists() and (not final.is_file() or _sha256(final) != state.get("model_sha256")):
        raise FileExistsError(f"{final} was not written by this run (its last.pt does not record it), and fit would "
                              f"overwrite it: move it away or choose another checkpoint_dir")
    return state


def checkpoint(model, opt, scaler, phase, epoch, result, selection, device, fingerprint) -> dict:
    return {
        "format": CHECKPOINT_FORMAT,
        "fingerprint": fingerprint,
        "phase": phase,
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": None if opt is None else opt.state_dict(),
        "scaler": None if scaler is None else scaler.state_dict(),
        "selection": selection.state(),
        "history": result.history,
        "best_metrics": result.best,
        "best_epoch": result.best_epoch,
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else None,
    }


def save_final(model: torch.nn.Module, state: dict, directory: Path) -> None:
    """The end of a run: ``last.pt`` first records ``model.pt``'s digest (how a later run tells
    fit's model.pt from a user's), then ``model.pt``, the plain state dict: a crash between the
    two leaves a run that resumes to write it."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    state["model_sha256"] = hashlib.sha256(buffer.getvalue()).hexdigest()
    save_atomic(state, directory / "last.pt")
    _write_atomic(directory / "model.pt", lambda tmp: tmp.write_bytes(buffer.getvalue()))


def run_lock(directory: Path):
    """Held by a fit for its whole run: a second fit into ``directory`` is refused at once
    (the lock file is beside the folder, which holds only fit's checkpoints)."""
    from .io import exclusive_lock

    directory = Path(directory)
    parent, name = directory.absolute().parent, f".{directory.name}.fit.lock"
    try:
        parent.mkdir(parents=True, exist_ok=True)
        open(parent / name, "a").close()
    except OSError:  # a location that cannot be written: prepare_checkpoint_dir says why, in its words
        return contextlib.nullcontext()
    return exclusive_lock(parent, name, "another fit", "pass another checkpoint_dir")


def data_identity(data) -> dict[str, Any] | None:
    """What a resumed run must train on again: the number of examples and, for in-memory data,
    a digest of the targets and of the first examples' inputs (cheap, and enough to tell
    another data set from this one)."""
    if data is None:
        return None
    try:
        n = len(data)
    except TypeError:
        return {"examples": None}
    identity: dict[str, Any] = {"examples": n}
    inputs, targets = getattr(data, "inputs", None), getattr(data, "targets", None)
    if isinstance(inputs, dict) and isinstance(targets, torch.Tensor):
        digest = hashlib.sha256(targets.detach().cpu().contiguous().numpy().tobytes())
        for name in sorted(inputs):
            digest.update(inputs[name][:64].detach().cpu().contiguous().numpy().tobytes())
        identity["sha256"] = digest.hexdigest()
    return identity
