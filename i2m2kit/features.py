"""Frozen means computed once: a frozen backbone's outputs for every example, kept, and the
heads trained on them.

In the ``"frozen_backbone"`` regime the shared backbone never changes, so running it again
every epoch over every example is wasted work (most of it, when the backbone is a pretrained
transformer and the heads are small). ``fit`` instead asks ``cached_features`` for the
backbone's outputs on the training and validation sets: computed once, batched, on the run's
device, with a progress bar, and kept

* in memory (``feature_cache=True``, the default), for every later call in this process: the
  five models ``compare_models`` trains share one backbone, so they share its features; or
* on disk (``feature_cache=<folder>``), one sub-folder per key, read back memory-mapped, so a
  large set need not fit in memory and a later run starts from the features.

The key is a digest of everything the features depend on: the backbone's architecture and
preprocessing (its ``repr``: checkpoint names, image-processor settings), its weights, the
inputs of every example, the device type and the autocast setting. Another checkpoint, other
weights, other preprocessing or other data give another key, so a stale cache is never read.
The heads then train on ``heads_on_features(model)``: the same experts (shared modules, so
training them trains the model's), reading the kept features instead of the inputs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .data import TensorData, make_loader, to_device
from .experts import I2M2
from .inference import autocast

FORMAT_VERSION = 1
MEMORY_ENTRIES = 4  # in-memory feature sets kept (train and valid of the last two backbones)
_MEMORY: "OrderedDict[str, TensorData]" = OrderedDict()


def flatten(outputs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """A backbone's outputs ``{modality: tensor or tuple of tensors}`` as flat tensors
    ``{"image#0": features, "image#1": mask, ...}`` (a tensor alone is ``"image"``)."""
    flat = {}
    for name, value in outputs.items():
        if isinstance(value, torch.Tensor):
            flat[name] = value
        else:
            flat.update({f"{name}#{i}": v for i, v in enumerate(value)})
    return flat


class CachedFeatures(nn.Module):
    """The backbone's place in a heads-only model: flat kept features back into the
    backbone's outputs (see ``flatten``)."""

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        grouped: dict[str, Any] = {}
        for key in sorted(inputs, key=lambda k: (k.split("#")[0], int(k.split("#")[1]) if "#" in k else -1)):
            name, _, index = key.partition("#")
            if index:
                grouped.setdefault(name, []).append(inputs[key])
            else:
                grouped[name] = inputs[key]
        return {k: tuple(v) if isinstance(v, list) else v for k, v in grouped.items()}


def heads_on_features(model: I2M2, keys: list[str]) -> I2M2:
    """``model``'s experts (the same modules) reading kept features with these ``keys``."""
    return I2M2(dict(model.experts), model.likelihood, backbone=CachedFeatures(), modalities=keys)


def digest(backbone: nn.Module, data: TensorData, device: torch.device, amp: bool | torch.dtype) -> str:
    """The key of ``backbone``'s features on ``data`` (see the module docstring)."""
    h = hashlib.blake2b(digest_size=20)
    h.update(f"v{FORMAT_VERSION} {device.type} amp={amp} torch={torch.__version__}\n{backbone!r}".encode())
    for name, tensor in list(backbone.state_dict().items()) + sorted(data.inputs.items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@torch.no_grad()
def compute(backbone: nn.Module, data: TensorData, device: torch.device, amp: bool | torch.dtype = True,
            batch_size: int = 256, progress: bool = True, name: str = "data") -> dict[str, torch.Tensor]:
    """The backbone's flat outputs for every example, in order, where ``data``'s inputs are."""
    was_training = backbone.training
    backbone.eval()
    where = next(iter(data.inputs.values())).device
    parts: dict[str, list[torch.Tensor]] = {}
    with torch.random.fork_rng(devices=[]):  # a loader draws its seed: the training's random numbers stay as they were
        for inputs, _ in tqdm(make_loader(data, batch_size, shard=False), desc=f"features ({name})", leave=False,
                              disable=not progress):
            with autocast(device, amp):
                out = flatten(backbone(to_device(inputs, device)))
            for key, value in out.items():
                parts.setdefault(key, []).append(value.to(where))
    backbone.train(was_training)
    return {key: torch.cat(values) for key, values in parts.items()}


def cached_features(backbone: nn.Module, data: TensorData, device: torch.device, amp: bool | torch.dtype = True,
                    cache: bool | str | os.PathLike = True, batch_size: int = 256, progress: bool = True,
                    name: str = "data") -> TensorData:
    """``data`` with the frozen ``backbone``'s outputs as its inputs (same targets, same order):
    from the cache when its key is there, else computed and kept (``cache``: True in memory,
    a folder on disk)."""
    key = digest(backbone, data, device, amp)
    if cache is True and key in _MEMORY:
        _MEMORY.move_to_end(key)
        return _MEMORY[key]
    folder = Path(cache).expanduser() / key if cache is not True else None
    if folder is not None and (folder / "key.json").exists():
        return TensorData(read(folder), data.targets)
    features = TensorData(compute(backbone, data, device, amp, batch_size, progress, name), data.targets)
    if folder is not None:
        write(folder, features.inputs, {"format_version": FORMAT_VERSION, "key": key, "examples": len(data),
                                        "backbone": repr(backbone)[:2000]})
    else:
        _MEMORY[key] = features
        while len(_MEMORY) > MEMORY_ENTRIES:
            _MEMORY.popitem(last=False)
    return features


def write(folder: Path, arrays: Mapping[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """The features as one ``.npy`` per key and ``key.json`` last, into a temporary folder
    renamed into place: a killed run leaves no half-written cache that would be read."""
    staging = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    dtypes = {}
    for key, tensor in arrays.items():
        t = tensor.detach().cpu()
        dtypes[key] = str(t.dtype).removeprefix("torch.")
        if t.dtype == torch.bfloat16:  # numpy has no bfloat16: kept as float32, exactly
            t = t.float()
        np.save(staging / f"{key}.npy", t.numpy())
    (staging / "key.json").write_text(json.dumps({**meta, "dtypes": dtypes}, indent=1))
    try:
        os.replace(staging, folder)
    except OSError:  # another process wrote the same key first: its files are the same features
        shutil.rmtree(staging, ignore_errors=True)


def read(folder: Path) -> dict[str, torch.Tensor]:
    """A cache folder's features, memory-mapped (copy-on-write: pages are read when used)."""
    meta = json.loads((folder / "key.json").read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{folder}: feature cache of format {meta.get('format_version')}, this package reads "
                         f"{FORMAT_VERSION}; delete the folder")
    out = {}
    for key, dtype in meta["dtypes"].items():
        t = torch.from_numpy(np.load(folder / f"{key}.npy", mmap_mode="c"))
        out[key] = t.to(getattr(torch, dtype)) if dtype == "bfloat16" else t
    return out


def clear_memory() -> None:
    """Forget the features kept in memory."""
    _MEMORY.clear()
