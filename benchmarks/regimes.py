"""The regime experiment at full size: every model against the Bayes limit.

Two families of the selection-variable model:
  gaussian  Gaussian class-conditionals, dims (8, 8), a grid of intra x inter strengths
  nuisance  dims (8, 256): an informative low-dimensional modality and a weak one buried in
            nuisance coordinates, over inter strength x training-set size
Prints one table per family (accuracy and accuracy / Bayes per model) and the findings.

    python benchmarks/regimes.py [--family gaussian nuisance] [--n-train 50000] [--epochs 40]
"""

import argparse
import time

from i2m2kit import regimes as rg
from i2m2kit.cli import format_table
from i2m2kit.io import write_json_atomic


def table(rows, keys):
    """One line per grid point, one column per model (grid keys and model names may coincide)."""
    points = {}
    for r in rows:
        p = points.setdefault(tuple(r[k] for k in keys), {("point", k): r[k] for k in keys})
        p[("model", r["label"])] = r["accuracy"]
        p[("model", "Bayes")] = r["bayes_accuracy"]
    labels = list(dict.fromkeys(r["label"] for r in rows)) + ["Bayes"]
    out = [points[p] for p in sorted(points)]
    for p in out:
        p[("ratio", "i2m2")] = p[("model", "i2m2")] / p[("model", "Bayes")]
    columns = [(("point", k), k) for k in keys] + [(("model", l), l) for l in labels] + [(("ratio", "i2m2"), "i2m2/Bayes")]
    return format_table(out, columns)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", nargs="*", default=["gaussian", "nuisance"])
    parser.add_argument("--n-train", type=int, default=50_000)
    parser.add_argument("--n-test", type=int, default=50_000)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write every row to this file")
    args = parser.parse_args()
    common = dict(n_valid=10_000, n_test=args.n_test, epochs=args.epochs, patience=args.patience,
                  batch_size=128, device=args.device, seed=args.seed)
    all_rows = {}
    for family in args.family:
        started = time.perf_counter()
        if family == "gaussian":
            rows = rg.regime_map({"intra": [0.0, 0.5, 1.0, 2.0], "inter": [0.0, 1.5, 3.0]}, sizes=[args.n_train],
                                 simulator={"dims": (8, 8)}, **common)
            keys = ["intra", "inter", "n_train"]
        else:
            rows = rg.regime_map({"inter": [0.0, 2.0, 4.0]}, sizes=[1_000, 5_000, args.n_train],
                                 simulator={"dims": (8, 256), "intra": (2.0, 0.5), "interaction_dims": 4}, **common)
            keys = ["inter", "n_train"]
        print(f"\n== {family} family ({time.perf_counter() - started:.0f} s) ==")
        print(table(rows, keys))
        for sentence in rg.findings(rows, args.n_test):
            print("-", sentence)
        all_rows[family] = rows
    if args.json:
        write_json_atomic(all_rows, args.json)


if __name__ == "__main__":
    main()
