"""NLVR (v1): the five models over seeds, test accuracy against the majority baseline.

Trains every model (uni:image, uni:text, intra, inter, I2M2) on the training examples at
hand (3,525 of the published ~75,000 with ``train_partial.json``), selects each run's epoch
on dev accuracy and reports test accuracy (mean and std over seeds), then I2M2 with a
modality removed. Prepares the data first unless the prepared folder exists.

    python benchmarks/nlvr.py --raw ../shared/data/nlvr/nlvr1 --prepared data/nlvr --seeds 0 1 2
"""

import argparse
import time

import i2m2kit as ik
from i2m2kit.cli import format_table
from i2m2kit.io import write_json_atomic
from i2m2kit.runner import prepare_data
from i2m2kit.tasks import nlvr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw", default="../shared/data/nlvr/nlvr1", help="NLVR v1 JSON files")
    parser.add_argument("--prepared", default="data/nlvr", help="prepared folder (made if missing)")
    parser.add_argument("--downsample", type=int, default=5, choices=[1, 2, 5, 10])
    parser.add_argument("--backbone", default="auto", choices=nlvr.TEXT_MODELS)
    parser.add_argument("--regime", default="joint", choices=["joint", "frozen_backbone"])
    parser.add_argument("--fusion", default="attention", choices=nlvr.FUSIONS)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", help="also write the rows to this JSON file")
    args = parser.parse_args()

    prepare_data("nlvr", args.raw, args.prepared, args=("--downsample", str(args.downsample)))
    data = nlvr.load(args.prepared, args.backbone, downsample=args.downsample)
    majority = nlvr.majority_baseline(data)
    started = time.perf_counter()
    rows, trained = ik.compare_across_seeds(
        lambda: nlvr.build_model(data.text, fusion=args.fusion, shared_backbone=args.regime == "frozen_backbone"),
        data.splits["train"], data.splits["valid"], data.splits["test"], seeds=args.seeds,
        **nlvr.recipe(args.epochs, args.regime, args.lr), device=args.device)
    seconds = time.perf_counter() - started
    removed = [ik.evaluate_missing(models["i2m2"], data.splits["test"], device=args.device) for models in trained]
    for i, r in enumerate(removed[0]):
        values = [m[i]["accuracy"] for m in removed]
        rows.append({"model": f"i2m2, {r['modalities']} only" if "+" not in r["modalities"] else "i2m2 (both)",
                     "accuracy": sum(values) / len(values), "accuracy_runs": values})
    rows.insert(0, {"model": "majority", "accuracy": majority["test"]})
    print(f"NLVR v1, {data.text.model} text encoder, regime {args.regime}, fusion {args.fusion}, images 1/{args.downsample}; "
          f"trained on {len(data.splits['train'])}, selected on dev ({len(data.splits['valid'])}), "
          f"test {len(data.splits['test'])}; seeds {args.seeds}, {args.epochs} epochs, {seconds:.0f} s")
    print(format_table(rows, [("model", "model"), ("accuracy", "test accuracy"), ("accuracy_std", "std"),
                              ("best_epoch", "best epoch (mean)")]))
    if args.out:
        write_json_atomic({"args": vars(args), "rows": rows, "seconds": seconds}, args.out)


if __name__ == "__main__":
    main()
