"""AV-MNIST's published setting on one GPU: 30 epochs per stage, seeds 0, 1, 2, both regimes,
the six runs as concurrent processes on the one GPU, results as JSON under --out.

1. The prepared folder is built here from the raw files (``data_scripts/prepare_avmnist.py``
   from --raw), since a fresh GPU machine has nothing else.
2. The epoch cost of each expert alone and of I2M2 (``timing.report_epoch_cost``), on the GPU
   with the data on it, before the runs start (on --timing-pairs pairs).
3. One worker process per (regime, seed): ``ik.compare_models`` with
   ``avmnist.recipe`` on the whole training set, the data on the GPU. Each writes
   ``run_<regime>_<seed>.json`` as soon as it ends: every model's test accuracy, best epoch,
   seconds per epoch (from ``FitResult.elapsed``), and for I2M2 the seconds until its
   validation accuracy first reached the published 72.38 (pretraining included when staged),
   and the GPU memory it peaked at.
4. While they run, ``nvidia-smi`` is sampled every second (utilisation, memory). Workers still
   running at --budget-s are stopped, and ``summary.json`` says which runs were cut.

    python benchmarks/avmnist_gpu.py --raw ../shared/data --out "$OUT" [--epochs 30] [--budget-s 480]
    python benchmarks/avmnist_gpu.py --raw ../shared/data --out /tmp/rehearsal --n-train 300 --n-test 100 \\
        --valid-size 50 --epochs 1 --timing-pairs 100          # the CPU rehearsal, a minute
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

import i2m2kit as ik
from i2m2kit.io import write_json_atomic
from i2m2kit.runner import prepare_data
from i2m2kit.tasks import avmnist
from timing import report_epoch_cost

PUBLISHED_I2M2 = 0.7238


def on_device(data: dict[str, ik.TensorData], device: torch.device) -> dict[str, ik.TensorData]:
    return {k: ik.TensorData({m: x.to(device) for m, x in d.inputs.items()}, d.targets.to(device)) for k, d in data.items()}


def worker(args: argparse.Namespace) -> None:
    """One (regime, seed): the five models, written to run_<regime>_<seed>.json."""
    device = ik.resolve_device(args.device)
    data = on_device(avmnist.load(args.prepared, valid_size=args.valid_size), device)
    fits: dict[str, ik.FitResult] = {}
    started = time.perf_counter()
    rows = ik.compare_models(avmnist.build_model, data["train"], data["valid"], data["test"], seed=args.seed,
                             fit_results=fits, progress=False,
                             recipe=avmnist.recipe(args.epochs, args.regime), device=device)
    models = {}
    for r in rows:
        fit = fits[r["model"]]
        epochs = [(h, t) for h, t in zip(fit.history, fit.elapsed) if h["epoch"] > 0]
        seconds = np.diff([0.0] + [t for _, t in epochs])
        entry = {"accuracy": r["accuracy"], "best_epoch": r["best_epoch"], "train_seconds": r["train_seconds"],
                 "epochs": len(epochs), "seconds_per_epoch": float(np.median(seconds)) if len(seconds) else None}
        if r["model"] == "i2m2":
            before = r["train_seconds"] - (fit.elapsed[-1] if fit.elapsed else 0.0)  # the experts' pretraining
            reached = [t for h, t in zip(fit.history, fit.elapsed) if h.get("valid_accuracy", 0) >= PUBLISHED_I2M2]
            entry["seconds_to_published_valid"] = before + reached[0] if reached else None
        models[r["model"]] = entry
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    write_json_atomic({"regime": args.regime, "seed": args.seed, "epochs": args.epochs, "device": str(device),
                       "seconds": time.perf_counter() - started, "peak_memory_bytes": peak, "models": models},
                      Path(args.out) / f"run_{args.regime}_{args.seed}.json")


def sample_gpu(samples: list, stop: threading.Event) -> None:
    """nvidia-smi every second: utilisation (%) and memory used (MiB) of GPU 0."""
    while not stop.wait(1.0):
        try:
            line = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits",
                                   "-i", "0"], capture_output=True, text=True, timeout=10).stdout.strip()
            utilisation, memory = (float(x) for x in line.split(","))
            samples.append({"t": time.time(), "utilisation": utilisation, "memory_mib": memory})
        except (OSError, ValueError, subprocess.SubprocessError):
            return  # no nvidia-smi (the CPU rehearsal): nothing to sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw", default="../shared/data", help="folder of mnist/, fsdd/, esc50/")
    parser.add_argument("--out", default=os.environ.get("OUT", "outputs/avmnist_gpu"), help="where the JSON goes ($OUT)")
    parser.add_argument("--work", help="where the prepared folder goes (default: a temporary folder beside --out)")
    parser.add_argument("--n-train", type=int, help="training pairs built (default: the published 60,000)")
    parser.add_argument("--n-test", type=int, help="test pairs built (default: the published 10,000)")
    parser.add_argument("--valid-size", type=int, default=5000, help="the last pairs of training validate (published)")
    parser.add_argument("--epochs", type=int, default=30, help="per stage (published: 30)")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--regimes", nargs="*", default=["pretrain_finetune", "joint"])
    parser.add_argument("--timing-pairs", type=int, default=10000, help="pairs in the epoch-cost measurement")
    parser.add_argument("--budget-s", type=float, default=480, help="stop the runs still going after this long")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--prepared", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--regime", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work) if args.work else out.parent / f".{out.name}-prepared"
    sizes = [a for flag, v in (("--n-train", args.n_train), ("--n-test", args.n_test)) if v for a in (flag, str(v))]
    prepared = prepare_data("avmnist", args.raw, work, args=("--no-progress", *sizes), reads=avmnist.RAW_READS)
    prepare_seconds = time.perf_counter() - started
    device = ik.resolve_device(args.device)

    subset = on_device(avmnist.load(prepared, valid_size=1, limit=args.timing_pairs, splits=("train",)), device)["train"]
    torch.manual_seed(0)
    epoch_cost = report_epoch_cost(avmnist.build_model(), subset, 40, device, repeats=2)

    samples, stop = [], threading.Event()
    sampler = threading.Thread(target=sample_gpu, args=(samples, stop), daemon=True)
    sampler.start()
    runs = {}
    for regime in args.regimes:
        for seed in args.seeds:
            log = open(out / f"run_{regime}_{seed}.log", "w")
            runs[(regime, seed)] = subprocess.Popen(
                [sys.executable, __file__, "--worker", "--prepared", str(prepared), "--out", str(out), "--seed", str(seed),
                 "--regime", regime, "--epochs", str(args.epochs), "--valid-size", str(args.valid_size),
                 "--device", args.device], stdout=log, stderr=subprocess.STDOUT)
    deadline = started + args.budget_s
    while any(p.poll() is None for p in runs.values()) and time.perf_counter() < deadline:
        time.sleep(1.0)
    cut = [f"{regime} seed {seed}" for (regime, seed), p in runs.items() if p.poll() is None]
    for p in runs.values():
        if p.poll() is None:
            p.kill()
    stop.set()
    failed = [f"{regime} seed {seed} (exit {p.returncode}; see run_{regime}_{seed}.log)"
              for (regime, seed), p in runs.items() if p.returncode not in (0, None, -9)]

    results = [json.loads(f.read_text()) for f in sorted(out.glob("run_*.json"))]
    table = []
    for regime in args.regimes:
        done = [r for r in results if r["regime"] == regime]
        for model in (done[0]["models"] if done else {}):
            values = [r["models"][model] for r in done]
            accuracy = [v["accuracy"] for v in values]
            table.append({"regime": regime, "model": model, "seeds": [r["seed"] for r in done],
                          "accuracy": float(np.mean(accuracy)), "accuracy_std": float(np.std(accuracy)),
                          "accuracy_runs": accuracy,
                          "seconds_per_epoch": float(np.median([v["seconds_per_epoch"] for v in values
                                                                if v["seconds_per_epoch"] is not None] or [np.nan])),
                          "seconds_to_published_valid": [v.get("seconds_to_published_valid") for v in values]})
    gpu = {}
    if samples:
        gpu = {"utilisation_mean": float(np.mean([s["utilisation"] for s in samples])),
               "utilisation_max": float(np.max([s["utilisation"] for s in samples])),
               "memory_mib_max": float(np.max([s["memory_mib"] for s in samples])), "samples": len(samples)}
    write_json_atomic({"args": vars(args), "device": str(device),
                       "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                       "prepare_seconds": prepare_seconds, "epoch_cost_seconds": epoch_cost, "gpu": gpu,
                       "runs_finished": len(results), "runs_cut_at_budget": cut, "runs_failed": failed,
                       "table": table, "seconds": time.perf_counter() - started}, out / "summary.json")
    for row in table:
        print(f"{row['regime']:18s} {row['model']:10s} {100 * row['accuracy']:.2f} ± {100 * row['accuracy_std']:.2f} "
              f"({len(row['seeds'])} seed(s)); {row['seconds_per_epoch']:.2f} s/epoch")
    print(f"{len(results)} run(s) finished, cut: {cut or 'none'}, failed: {failed or 'none'}; "
          f"GPU: {gpu or 'not sampled'}; {time.perf_counter() - started:.0f} s; {out / 'summary.json'}")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
