"""Shared by the benchmark scripts: the cost of an I2M2 training epoch against its experts',
and against the published data path. Ratios are measured within one run (the machine is
shared and noisy): compare them, not absolute times across runs."""

import functools
import time

import torch

import i2m2kit as ik


class PerExample(torch.utils.data.Dataset):
    """The published data path, for comparison: one example at a time from NumPy arrays in host
    memory, batched by the DataLoader's default collate, copied to the device every batch."""

    def __init__(self, data: ik.TensorData):
        self.inputs = {m: x.cpu().numpy() for m, x in data.inputs.items()}
        self.targets = data.targets.cpu().numpy()

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        return {m: x[i] for m, x in self.inputs.items()}, int(self.targets[i])


def epoch_seconds(model: ik.I2M2, train: torch.utils.data.Dataset, batch_size: int, device: torch.device,
                  seed: int = 0) -> float:
    """Wall time of one training epoch."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    ik.fit(model, train, epochs=1, batch_size=batch_size, device=device, progress=False, seed=seed,
           optimizer=functools.partial(torch.optim.SGD, lr=0.01))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def report_epoch_cost(model: ik.I2M2, train: ik.TensorData, batch_size: int, device: torch.device,
                      repeats: int = 2) -> dict[str, float]:
    """Print and return seconds per training epoch of each expert alone, of I2M2, and of I2M2
    fed the published way; with the two ratios (I2M2 / sum of its experts, aim <= 1.05; our
    in-memory batches / the per-example loader).

    The runs take turns, one epoch each per round, after a warm-up round: a change in the
    machine's load then falls on every run of a round alike rather than on one of them. Each
    run's time is its best round; the ratio of every round is printed too.
    """
    runs = {name: (model.subset(name), train) for name in model.experts}
    runs["i2m2"] = (model, train)
    runs["i2m2, per-example loader"] = (model, PerExample(train))
    rounds = []
    for round_ in range(repeats + 1):
        times = {name: epoch_seconds(m, data, batch_size, device, seed=round_) for name, (m, data) in runs.items()}
        if round_:  # round 0 warms up every run
            rounds.append(times)
    seconds = {name: min(r[name] for r in rounds) for name in runs}

    def product_ratio(times: dict[str, float]) -> float:
        return times["i2m2"] / sum(times[name] for name in model.experts)

    print(f"seconds per training epoch ({len(train)} examples, batch {batch_size}, {device}, best of {repeats} "
          "rounds): " + ", ".join(f"{k} {v:.2f}" for k, v in seconds.items()))
    print(f"ratio I2M2 / (sum of its {len(model.experts)} experts alone): {product_ratio(seconds):.3f}  (aim <= 1.05; "
          f"each round: {', '.join(f'{product_ratio(r):.3f}' for r in rounds)})")
    print(f"ratio in-memory batches / per-example loader (I2M2 epoch): "
          f"{seconds['i2m2'] / seconds['i2m2, per-example loader']:.3f}", flush=True)
    return seconds
