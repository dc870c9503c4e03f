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
from timing import report_epoch_cost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/avmnist", help="prepared AV-MNIST folder (or the original release)")
    parser.add_argument("--limit", type=int, help="use the first N examples of each split")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--regimes", nargs="*", default=["pretrain_finetune", "joint"])
    parser.add_argument("--batch-size", type=int, default=40)
    parser.add_argument("--channels", type=int, default=3, help="width of the uni-modal LeNets (published: 3)")
    parser.add_argument("--joint-channels", type=int, default=6, help="width of the joint expert's LeNets (published: 6)")
    parser.add_argument("--fusion", default="concat", choices=avmnist.FUSIONS)
    parser.add_argument("--models", nargs="*", help="train only these (uni:image, uni:audio, intra, inter, i2m2)")
    parser.add_argument("--lr", nargs="*", default=[], metavar="MODEL=LR",
                        help="replace a model's published learning rate, e.g. i2m2=0.1")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--timing-only", action="store_true")
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds of epochs (after a warm-up round)")
    parser.add_argument("--out", help="also write the accuracy rows to this JSON file")
    parser.add_argument("--skip-timing", action="store_true", help="only the comparison of the five models")
    parser.add_argument("--weigh", action="store_true", help="also the weighted I2M2 (experts trained alone, weighed on validation)")
    args = parser.parse_args()
    device = ik.resolve_device(args.device)
    learning_rates = {}
    for item in args.lr:
        model, _, lr = item.partition("=")
        try:
            learning_rates[model] = float(lr)
        except ValueError:
            parser.error(f"--lr takes MODEL=LR, e.g. i2m2=0.1; got {item!r}")
    build = functools.partial(avmnist.build_model, channels=args.channels, joint_channels=args.joint_channels,
                              fusion=args.fusion)

    started = time.perf_counter()
    data = avmnist.load(args.data, limit=args.limit)
    if device.type == "cuda":  # no host-to-device copies in the training loop
        data = {k: ik.TensorData({m: x.to(device) for m, x in d.inputs.items()}, d.targets.to(device))
                for k, d in data.items()}
    print(f"data: {', '.join(f'{k} {len(d)}' for k, d in data.items())} on {device} "
          f"({time.perf_counter() - started:.1f} s to load)")

    if not args.skip_timing:
        torch.manual_seed(0)
        report_epoch_cost(build(), data["train"], args.batch_size, device, args.repeats)
    if args.timing_only:
        return

    columns = [("regime", "regime"), ("model", "model"), ("accuracy", "accuracy"), ("std", "std"), ("runs", "runs")]
    runs = []  # (regime, seed, model, accuracy, best epoch): written after every seed, full runs take hours
    for regime in args.regimes:
        recipe = avmnist.recipe(args.epochs, regime)
        per_model = {m: dict(o) for m, o in recipe.per_model.items()}
        for model, lr in learning_rates.items():
            per_model.setdefault(model, {})["optimizer"] = avmnist.published_sgd(lr)
        started = time.perf_counter()

        def record(seed, rows, regime=regime):
            runs.extend((regime, seed, r["model"], 100 * r["accuracy"], r["best_epoch"]) for r in rows)
            # the epoch that validation selected: one near the last says more epochs would still help
            print(f"{regime}, seed {seed}: " + ", ".join(f"{r['model']} {100 * r['accuracy']:.2f} (epoch {r['best_epoch']})"
                                                      for r in rows), flush=True)
            if args.out:
                write_json_atomic({"args": vars(args), "runs": runs}, args.out)

        summary, _ = ik.compare_across_seeds(build, data["train"], data["valid"], data["test"], args.seeds,
                                             after_seed=record, names=args.models, weigh=args.weigh, device=device,
                                             recipe=recipe.replace(batch_size=args.batch_size, per_model=per_model))
        table = [{"regime": regime, "model": r["model"], "accuracy": 100 * r["accuracy"], "std": 100 * r["accuracy_std"],
                  "runs": " ".join(f"{100 * a:.2f}" for a in r["accuracy_runs"])} for r in summary]
        print(f"\n{regime}: {(time.perf_counter() - started) / 60:.1f} min for {len(args.seeds)} seed(s); test accuracy "
              f"(%), mean and std over seeds {args.seeds} (published I2M2: 72.38)")
        print(format_table(table, columns), flush=True)


if __name__ == "__main__":
    main()
