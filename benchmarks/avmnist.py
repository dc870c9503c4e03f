"""AV-MNIST: the five models with the published recipe, and the cost of an I2M2 epoch.

1. Time per training epoch of each expert alone (uni:image, uni:audio, inter) and of I2M2,
   on the same data and batches, and the ratio of I2M2's epoch time to the sum of the three
   experts' (a product of experts should cost no more than its experts: aim <= 1.05).
2. Unless --timing-only: every model (uni-modal, intra, inter, I2M2) trained with the
   published recipe (SGD lr 0.01, weight decay 1e-4, batch 40, gradient clipping 8, 30
   epochs, selection on validation accuracy) in each regime (pretrain each expert then
   fine-tune; joint training from scratch), over seeds: test accuracy mean and std.

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
from i2m2kit.tasks import avmnist


def epoch_seconds(model: ik.I2M2, train: ik.TensorData, batch_size: int, device: torch.device) -> float:
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
    args = parser.parse_args()
    device = ik.resolve_device(args.device)

    started = time.perf_counter()
    data = avmnist.load(args.data, limit=args.limit)
    if device.type == "cuda":  # no host-to-device copies in the training loop
        data = {k: ik.TensorData({m: x.to(device) for m, x in d.inputs.items()}, d.targets.to(device))
                for k, d in data.items()}
    print(f"data: {', '.join(f'{k} {len(d)}' for k, d in data.items())} on {device} "
          f"({time.perf_counter() - started:.1f} s to load)")

    torch.manual_seed(0)
    full = avmnist.build_model()
    seconds = {name: epoch_seconds(full.subset(name), data["train"], args.batch_size, device) for name in full.experts}
    seconds["i2m2"] = epoch_seconds(full, data["train"], args.batch_size, device)
    experts = sum(v for k, v in seconds.items() if k != "i2m2")
    print("\nseconds per training epoch: " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))
    print(f"ratio I2M2 / (sum of the three experts alone): {seconds['i2m2'] / experts:.3f}  (aim <= 1.05)")
    if args.timing_only:
        return

    recipe = dict(epochs=args.epochs, pretrain_epochs=args.epochs, batch_size=args.batch_size, clip_grad_norm=8.0,
                  optimizer=functools.partial(torch.optim.SGD, lr=0.01, weight_decay=1e-4),
                  monitor="accuracy", device=device)
    rows = []
    for regime in args.regimes:
        started = time.perf_counter()
        summary, _ = ik.compare_across_seeds(avmnist.build_model, data["train"], data["valid"], data["test"],
                                             seeds=args.seeds, regime=regime, **recipe)
        wall = time.perf_counter() - started
        rows += [{"regime": regime, "model": r["model"], "accuracy": 100 * r["accuracy"],
                  "std": 100 * r["accuracy_std"], "wall": wall} for r in summary]
        print(f"{regime}: {wall / 60:.1f} min for {len(args.seeds)} seed(s)", flush=True)
    print("\ntest accuracy (%), mean and std over seeds", args.seeds, "(published I2M2: 72.38)")
    print(format_table(rows, [("regime", "regime"), ("model", "model"), ("accuracy", "accuracy"), ("std", "std")]))


if __name__ == "__main__":
    main()
