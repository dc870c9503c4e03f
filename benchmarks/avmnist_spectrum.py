"""The dependency spectrum on AV-MNIST: the five models from "intra only" to "inter only".

For each share of inter-modality pairs (the image shows a random digit a, the recording says
(label - a) mod 10; ``prepare_avmnist.py --inter-share``), the data is built from the raw
files, and the five models are trained with the published recipe in both regimes (pretrain
each expert then fine-tune; joint from scratch) over seeds. Printed per regime: test accuracy
(mean and std over seeds) on all pairs, on the published ones and on the inter-modality ones;
the label-preserving shuffle's drop (recordings re-paired within labels) for the models
reading both modalities; beside them the accuracy with perfect digit recognition and that of
the Bayes posterior composed from the share-0 uni-modal models (what equally good digit
recognition allows). Draws accuracy against the share per model (one HTML page, offline).

    python benchmarks/avmnist_spectrum.py --raw ../shared/data --work data/avmnist_spectrum \
        [--n-train 4000 --n-test 2000 --valid-size 1000 --epochs 3 --seeds 0 1 2] --json spectrum.json

At the defaults the five shares took 100 min on a 2-core CPU (15-26 min per share, the longer ones beside other work).
"""

import argparse
import time
from pathlib import Path

import plotly.io as pio

from i2m2kit import plots
from i2m2kit.cli import format_table
from i2m2kit.io import atomic_path, write_json_atomic
from i2m2kit.tasks import avmnist_spectrum as sp


def cell(row: dict, key: str) -> str:
    return f"{row[key]:.3f} ± {row[f'{key}_std']:.3f}" if key in row else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw", default="../shared/data", help="folder of mnist/, fsdd/, esc50/")
    parser.add_argument("--work", default="data/avmnist_spectrum", help="where the prepared folders go (one per share)")
    parser.add_argument("--shares", type=float, nargs="*", default=list(sp.SHARES))
    parser.add_argument("--n-train", type=int, default=4000, help="training pairs built, validation included")
    parser.add_argument("--n-test", type=int, default=2000)
    parser.add_argument("--valid-size", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=3, help="epochs of each stage (published: 30)")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--regimes", nargs="*", default=["pretrain_finetune", "joint"])
    parser.add_argument("--shuffle-repeats", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", help="write every row to this file (after each share)")
    parser.add_argument("--figure", default="avmnist_spectrum.html", help="the accuracy-against-share page")
    args = parser.parse_args()
    shares = sorted(args.shares)  # share 0 first: its uni-modal models are the reference's recognisers

    started, rows, recognisers = time.perf_counter(), [], None
    for share in shares:
        t = time.perf_counter()
        folder = sp.prepared(args.raw, Path(args.work) / f"share_{share:g}", share, args.n_train, args.n_test)
        share_rows, trained = sp.train_share(folder, valid_size=args.valid_size, epochs=args.epochs, seeds=args.seeds,
                                             regimes=args.regimes, shuffle_repeats=args.shuffle_repeats,
                                             device=args.device, progress=False)
        if share == 0:
            recognisers = {seed: trained[args.regimes[0], seed] for seed in args.seeds}
        if recognisers:
            share_rows += sp.reference_rows(recognisers, folder, valid_size=args.valid_size, regimes=args.regimes,
                                            device=args.device)
        rows += share_rows
        print(f"share {share:g}: {time.perf_counter() - t:.0f} s; " + ", ".join(
            f"{r['model']} {r['accuracy']:.3f}" for r in sp.over_seeds(share_rows) if r["regime"] == args.regimes[0]),
              flush=True)
        if args.json:
            write_json_atomic({"args": vars(args), "rows": rows}, args.json)
    minutes = (time.perf_counter() - started) / 60

    summary = sp.over_seeds(rows)
    columns = [("share", "share"), ("model", "model"), ("all", "accuracy"), ("published", "published pairs"),
               ("inter", "inter pairs"), ("drop", "label-shuffle drop")]
    for regime in args.regimes:
        table = [{"share": f"{r['share']:g}", "model": r["model"], "all": cell(r, "accuracy"),
                  "published": cell(r, "accuracy_published"), "inter": cell(r, "accuracy_inter"),
                  "drop": cell(r, "shuffle_drop")} for r in summary if r["regime"] == regime]
        print(f"\n{regime}: test accuracy, mean ± std over seeds {args.seeds} ({args.n_train - args.valid_size} "
              f"training pairs, {args.epochs} epoch(s) per stage)")
        print(format_table(table, columns))
    ceilings = [{"share": f"{s:g}", **{k: f"{v:.3f}" for k, v in sp.perfect_recognition(s).items()}} for s in shares]
    print("\nwith perfect digit recognition (reasoned ceilings):")
    print(format_table(ceilings, [("share", "share"), ("uni", "uni-modal"), ("intra", "intra (additive)"),
                                  ("joint", "joint (Bayes)")]))
    print(f"\n{minutes:.1f} min in all")

    figures = [plots.metric_curves([r for r in summary if r["regime"] == regime], x="share", group="model",
                                   x_title="share of inter-modality pairs",
                                   title=f"Test accuracy against the share of inter-modality pairs ({regime})")
               for regime in args.regimes]
    with atomic_path(args.figure) as tmp:
        tmp.write_text("<html><body>\n" + "\n".join(pio.to_html(f, include_plotlyjs=i == 0, full_html=False)
                                                      for i, f in enumerate(figures)) + "\n</body></html>")
    if args.json:
        write_json_atomic({"args": vars(args), "rows": rows, "summary": summary, "minutes": minutes}, args.json)
    print(f"figure: {args.figure}")


if __name__ == "__main__":
    main()
