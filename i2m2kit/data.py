"""The data a model trains on: in-memory multi-modal tensors and the loader over them.

``TensorData`` holds ``{modality: (N, ...)}`` and targets; ``make_loader`` gives batches of
``(inputs dict, targets)``, sharded between ranks under torchrun.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from . import distributed


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


def modalities_of(data) -> set[str] | None:
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


def local_part(data: Dataset) -> Dataset:
    """This rank's contiguous block of ``data`` for evaluation (all of it in one process)."""
    if not distributed.active():
        return data
    rows = distributed.contiguous_range(len(data))
    if isinstance(data, TensorData):
        block = slice(rows.start, rows.stop)
        return TensorData({k: v[block] for k, v in data.inputs.items()}, data.targets[block])
    return torch.utils.data.Subset(data, list(rows))


def to_device(batch_inputs: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch_inputs.items()}


def check_not_empty(data, name: str) -> None:
    """An empty data set fails here, named, not as a division by zero or torch.cat's error."""
    try:
        n = len(data)  # a DataLoader's length is its number of batches
    except TypeError:  # an iterable data set: its batches are counted as they come
        return
    if n == 0:
        raise ValueError(f"{name} holds no examples"
                         + (" (an empty DataLoader)" if isinstance(data, DataLoader) else " (an empty data set)"))


def split_sizes(data: Mapping[str, TensorData], class_names: Sequence[str], unit: str = "examples") -> dict[str, int]:
    """Print the size of each split (train, valid, test) and its examples per class
    (class-index targets); return the sizes."""
    names = [name for name in ("train", "valid", "test") if name in data]
    for name in names:
        counts = torch.bincount(data[name].targets, minlength=len(class_names)).tolist()
        print(f"{name:5s} {len(data[name]):6d} {unit}; per class {dict(zip(class_names, counts))}")
    return {name: len(data[name]) for name in names}
