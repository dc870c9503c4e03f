"""AV-MNIST: the five models with the published recipe, and the cost of an I2M2 epoch.

1. Time per training epoch of each expert alone (uni:image, uni:audio, inter) and of I2M2,
   on the same data and batches, and the ratio of I2M2's epoch time to the sum of the three
   experts' (a product of experts should cost no more than its experts: aim <= 1.05); then
   I2M2's epoch fed the published way (one example at a time, collated per batch) beside
   ours (whole batches sliced from tensors already in memory, on the GPU when there is one).
2. Unless --timing-only: every model (uni-modal, intra, inter, I2M2) trained with the
   published recipe (SGD lr 0.01, weight decay 1e-4, batch 40, gradient clipping 8, 30
   epochs, selection on validation accuracy) in each regime (pretrain each expert then
   fine-tune; joint training from scratch), over seeds: test accuracy mean and std. As
   published, the uni-modal and inter-modality runs are the pretraining: intra and I2M2
   start from their experts and are fine-tuned.

On a GPU the data lives on the GPU.

    python data_scripts/prepare_avmnist.py --raw ../shared/data --out data/avmnist
    python benchmarks/avmnist.py --data data/avmnist [--limit 5000] [--epochs 30] [--seeds 0 1 2]
"""

import argparse
import functools
import time

import torch

import i2m2kit as ik
from i2m2kit.cli import format_table
from i2m2kit.io import write_json_atomic
from i2m2kit.tasks import avmnist


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


def epoch_seconds(model: ik.I2M2, train: torch.utils.data.Dataset, batch_size: int, device: torch.device) -> float:
    """Wall time of one training epoch (the first epoch also pays for warm-up: run two, keep the second)."""
    times = []
    for epoch in range(2):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        ik.fit(model, train, epochs=1, batch_size=batch_size, device=device, progress=False, seed=epoch,
               optimizer=functools.partial(torch.optim.SGD, lr=0.01))
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return times[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/avmnist", help="prepared AV-MNIST folder (or the original release)")
    parser.add_argument("--limit", type=int, help="use the first N examples of each split")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--regimes", nargs="*", default=["pretrain_finetune", "joint"])
    parser.add_argument("--batch-size", type=int, default=40)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--timing-only", action="store_true")
    parser.add_argument("--out", help="also write the accuracy rows to this JSON file")
    parser.add_argument("--skip-timing", action="store_true", help="only the comparison of the five models")
    args = parser.parse_args()
    device = ik.resolve_device(args.device)

    started = time.perf_counter()
    data = avmnist.load(args.data, limit=args.limit)
    if device.type == "cuda":  # no host-to-device copies in the training loop
        data = {k: ik.TensorData({m: x.to(device) for m, x in d.inputs.items()}, d.targets.to(device))
                for k, d in data.items()}
    print(f"data: {', '.join(f'{k} {len(d)}' for k, d in data.items())} on {device} "
          f"({time.perf_counter() - started:.1f} s to load)")

    if not args.skip_timing:
        torch.manual_seed(0)
        full = avmnist.build_model()
        seconds = {name: epoch_seconds(full.subset(name), data["train"], args.batch_size, device)
                   for name in full.experts}
        seconds["i2m2"] = epoch_seconds(full, data["train"], args.batch_size, device)
        experts = sum(v for k, v in seconds.items() if k != "i2m2")
        print("\nseconds per training epoch: " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))
        print(f"ratio I2M2 / (sum of the three experts alone): {seconds['i2m2'] / experts:.3f}  (aim <= 1.05)")
        per_example = epoch_seconds(full, PerExample(data["train"]), args.batch_size, device)
        print(f"I2M2 epoch with the published data path (per-example loader): {per_example:.1f} s; "
              f"ratio in-memory batches / per-example loader: {seconds['i2m2'] / per_example:.3f}")
    if args.timing_only:
        return

    columns = [("regime", "regime"), ("model", "model"), ("accuracy", "accuracy"), ("std", "std"), ("runs", "runs")]
    rows = []
    for regime in args.regimes:  # each regime's table as soon as it is done: full runs take hours
        recipe = {**avmnist.published_recipe(args.epochs, regime), "batch_size": args.batch_size, "device": device}
        started = time.perf_counter()
        summary, _ = ik.compare_across_seeds(avmnist.build_model, data["train"], data["valid"], data["test"],
                                             seeds=args.seeds, **recipe)
        wall = time.perf_counter() - started
        done = [{"regime": regime, "model": r["model"], "accuracy": 100 * r["accuracy"], "std": 100 * r["accuracy_std"],
                 "runs": " ".join(f"{100 * a:.2f}" for a in r["accuracy_runs"])} for r in summary]
        rows += done
        print(f"\n{regime}: {wall / 60:.1f} min for {len(args.seeds)} seed(s); test accuracy (%), mean and std over "
              f"seeds {args.seeds} (published I2M2: 72.38)")
        print(format_table(done, columns), flush=True)
        if args.out:
            write_json_atomic({"args": vars(args), "rows": rows}, args.out)


if __name__ == "__main__":
    main()
