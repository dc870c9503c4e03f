"""The dependency diagnostics against the simulator's exact answer, and what they cost.

1. Validation: at simulator settings chosen here (not notebook 00's), the dependency report of
   the exact posterior (every diagnostic's true value) beside the report of the five models
   trained on samples of the same distribution; the verdict of each against the dependency
   the simulator holds.
2. Cost, measured in one run: the report's time over one evaluation pass of the same models
   on the same examples, each step's share; and PID (k-means discretisation + the BROJA
   program) on 10,000 examples, for 2 and for 10 classes.

    python benchmarks/diagnostics.py [--n-train 20000] [--epochs 15] [--out results.json]
"""

import argparse
import json
import time

import numpy as np
import torch
from tqdm.auto import tqdm

import i2m2kit as ik
from i2m2kit import diagnostics as D
from i2m2kit.tasks import synthetic

# (intra, inter, class-conditional, dims): none of them a cell of notebook 00's grid
SETTINGS = [
    (0.5, 0.0, "gaussian", (6, 6)),
    (0.0, 3.0, "gaussian", (6, 6)),
    (1.5, 1.0, "gaussian", (6, 6)),
    (1.5, 3.0, "mixture", (6, 6)),
    (0.0, 0.0, "gaussian", (6, 6)),
    (3.0, 0.0, "mixture", (10, 10)),
]


def trained_models(sim, n_train: int, epochs: int, hidden: int, seed: int):
    train, valid = synthetic.dataset(sim.sample(n_train)), synthetic.dataset(sim.sample(5000))
    trained: dict = {}
    ik.compare_models(lambda: synthetic.build_model(sim.dims, sim.n_classes, hidden), train, valid, valid,
                      trained=trained, epochs=epochs, patience=3, monitor="accuracy", batch_size=128,
                      device="cpu", seed=seed, progress=False)
    return trained


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-train", type=int, default=20_000)
    parser.add_argument("--n-test", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write every number as JSON here")
    args = parser.parse_args()
    results = {"validation": [], "cost": {}}

    print(f"1. Validation ({args.n_train} training samples, {args.epochs} epochs; exact = the exact posterior)")
    print(f"{'intra':>5} {'inter':>5} {'family':9s} {'Bayes':>6} | {'I2M2 drop: exact':>16} {'trained':>15} | "
          f"{'EMAP gap: exact':>15} {'trained':>8} | {'PID synergy':>11} | verdict: simulator / exact / trained")
    for intra, inter, family, dims in tqdm(SETTINGS, desc="settings", leave=False):
        sim = ik.SelectionModel(n_classes=2, dims=dims, intra=(intra, intra), inter=inter,
                                class_conditional=(family, family), seed=args.seed + 7)
        test = synthetic.dataset(sim.sample(args.n_test))
        exact = D.dependency_report(synthetic.bayes_model(sim).baselines(), test, seed=args.seed, device="cpu")
        trained = D.dependency_report(trained_models(sim, args.n_train, args.epochs, args.hidden, args.seed), test,
                                      seed=args.seed, device="cpu")
        e, t = ({r["model"]: r for r in rep.rows}["i2m2"] for rep in (exact, trained))
        row = {"intra": intra, "inter": inter, "family": family, "dims": dims,
               "bayes_accuracy": e["score"], "expected": synthetic.expected_verdict(sim),
               "exact": exact.to_dict(), "trained": trained.to_dict()}
        results["validation"].append(row)
        print(f"{intra:5.1f} {inter:5.1f} {family:9s} {e['score']:6.3f} | {e['drop']:+16.3f} "
              f"{t['drop']:+8.3f} ± {t['shuffled_std']:.3f} | {e['emap_gap']:+15.3f} {t['emap_gap']:+8.3f} | "
              f"{exact.pid['data']['synergy']:11.3f} | {row['expected']} / {exact.verdict} / {trained.verdict}")

    print("\n2. Cost (one run; the report on 2,000 test examples)")
    sim = ik.SelectionModel(n_classes=2, dims=(8, 8), intra=(1.0, 1.0), inter=3.0, seed=args.seed)
    models = trained_models(sim, 5000, 3, args.hidden, args.seed)
    test = synthetic.dataset(sim.sample(2000))
    started = time.perf_counter()
    for m in models.values():
        ik.predict(m, test, device="cpu")
    one_pass = time.perf_counter() - started
    started = time.perf_counter()
    report = D.dependency_report(models, test, seed=args.seed, device="cpu")
    total = time.perf_counter() - started
    results["cost"] = {"evaluation_pass_s": one_pass, "report_s": total, "ratio": total / one_pass,
                       "steps_s": report.seconds}
    print(f"one evaluation pass of the five models: {one_pass:.3f} s; the whole report: {total:.3f} s; "
          f"ratio {total / one_pass:.1f}")
    print("  steps: " + ", ".join(f"{k} {v:.3f} s ({v / one_pass:.1f} passes)" for k, v in report.seconds.items()))
    for classes in (2, 10):
        rng = np.random.default_rng(args.seed)
        y = rng.integers(0, classes, 10_000)
        logits = [torch.tensor(np.eye(classes)[y] * 2 + rng.normal(size=(10_000, classes))) for _ in range(2)]
        started = time.perf_counter()
        codes = [D.discretise(z, 8, args.seed) for z in logits]
        middle = time.perf_counter()
        D.pid(codes[0], codes[1], y)
        done = time.perf_counter()
        results["cost"][f"pid_10000_examples_{classes}_classes"] = {"discretise_s": middle - started, "pid_s": done - middle}
        print(f"PID on 10,000 examples, {classes} classes, 8 clusters per modality: k-means {middle - started:.2f} s, "
              f"BROJA program {done - middle:.2f} s")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
