"""PhysioNet/CinC Challenge 2012, in-hospital death: the five models against SAPS-I.

1. Unless --skip-timing: seconds per training epoch of each expert alone (static, series,
   joint) and of I2M2 on the same batches, and their ratio (I2M2 / sum of its experts).
2. Every model (uni:static, uni:series, intra, inter, I2M2) trained by ``ik.fit`` with
   ``physionet2012.recipe`` (Adam, selection on validation AUPRC, early stopping) in each
   regime, over seeds, on one seeded stratified split of set A (70/15/15; or another set as
   the test set): AUROC, AUPRC, and at the threshold that maximises the challenge's event-1
   score (min of sensitivity and PPV) on validation, the event-1 score and balanced accuracy
   on test; mean and std over the seeds. The same for SAPS-I alone, the clinical score of
   the outcomes file, on the same split (records without it left out).

    python benchmarks/physionet2012.py --raw ../shared/data/physionet2012 --data data/physionet2012 \\
        [--seeds 0 1 2] [--epochs 20] [--regimes joint pretrain_finetune] [--json out.json]
"""

import argparse
import time

import torch

import i2m2kit as ik
from i2m2kit.cli import format_table
from i2m2kit.io import write_json_atomic
from i2m2kit.runner import prepare_data
from i2m2kit.tasks import physionet2012 as pn
from timing import report_epoch_cost

METRICS = ("auroc", "auprc", "event1", "balanced_accuracy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw", default="../shared/data/physionet2012", help="the challenge files (set-a.tar.gz, Outcomes-a.txt)")
    parser.add_argument("--data", default="data/physionet2012", help="the prepared folder (built from --raw if missing)")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the stratified train/valid/test split")
    parser.add_argument("--test-set", choices=("b", "c"), help="test on this whole set instead of 15%% of set A")
    parser.add_argument("--stays", type=int, help="a stratified subsample of set A (quick runs)")
    parser.add_argument("--epochs", type=int, default=20, help="at most, per stage (early stopping after 5 without gain)")
    parser.add_argument("--regimes", nargs="*", default=["joint", "pretrain_finetune"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds of epochs (after a warm-up round)")
    parser.add_argument("--json", help="also write every row to this JSON file")
    parser.add_argument("--weigh", action="store_true", help="also the weighted I2M2 (experts trained alone, weighed on validation)")
    args = parser.parse_args()
    device = ik.resolve_device(args.device)
    prepare_data("physionet2012", args.raw, args.data)
    split = dict(split_seed=args.split_seed, test_set=args.test_set, stays=args.stays)
    data = pn.load(args.data, **split)
    print("data: " + ", ".join(f"{k} {len(d)} ({int(d.targets.sum())} deaths)" for k, d in data.items()))

    if not args.skip_timing:
        torch.manual_seed(0)
        report_epoch_cost(pn.build_model(), data["train"], pn.recipe().batch_size, device, args.repeats)

    reference = pn.reference_scores(args.data, **split)
    rows = [{"regime": "-", "model": f"{pn.REFERENCE} alone", "runs": 1,
             **{m: v for m, v in pn.clinical_metrics_of_scores(reference["valid"], reference["test"]).items()
                if m in METRICS}}]
    for regime in args.regimes:
        started = time.perf_counter()
        _, trained = ik.compare_across_seeds(pn.build_model, data["train"], data["valid"], data["test"], args.seeds,
                                             recipe=pn.recipe(args.epochs, regime), device=device, weigh=args.weigh)
        for name in trained[0]:
            rows.append({"regime": regime, "model": name, "runs": len(trained),
                         **pn.clinical_over_seeds([t[name] for t in trained], data["valid"], data["test"], device)})
        print(f"{regime}: {time.perf_counter() - started:.0f} s for {len(args.seeds)} seeds", flush=True)
        if args.json:
            write_json_atomic(rows, args.json)

    table = [{"regime": r["regime"], "model": r["model"], "runs": r["runs"],
              **{m: f"{r[m]:.3f}" + (f" +- {r[m + '_std']:.3f}" if f"{m}_std" in r else "") for m in METRICS}}
             for r in rows]
    print(format_table(table, [("regime", "regime"), ("model", "model"), ("auroc", "AUROC"), ("auprc", "AUPRC"),
                               ("event1", "event-1 (min Se, PPV)"), ("balanced_accuracy", "balanced accuracy"),
                               ("runs", "runs")]))


if __name__ == "__main__":
    main()
