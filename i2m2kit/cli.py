"""The command line: ``i2m2kit run`` (the main job) and ``i2m2kit doctor`` (the install)."""

from __future__ import annotations

import argparse
import json
import os
import importlib.metadata
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from .io import write_json_atomic


def doctor() -> int:
    """Report the torch build and refuse a CUDA build on a machine without an NVIDIA GPU."""
    has_gpu = shutil.which("nvidia-smi") is not None and subprocess.run(
        ["nvidia-smi", "-L"], capture_output=True).returncode == 0
    cuda_wheels = sorted(d.metadata["Name"] for d in importlib.metadata.distributions()
                         if (d.metadata["Name"] or "").lower().startswith("nvidia-"))
    print(f"torch {torch.__version__} (CUDA build: {torch.version.cuda or 'no'}); "
          f"NVIDIA GPU: {'yes' if has_gpu else 'no'}; CUDA available to torch: {torch.cuda.is_available()}")
    if not has_gpu and (torch.version.cuda or cuda_wheels):
        print(f"error: a CUDA build of torch was installed on a machine without an NVIDIA GPU "
              f"({', '.join(cuda_wheels) or torch.__version__}); reinstall with "
              f"'pip install -c constraints-cpu.txt -e .'", file=sys.stderr)
        return 1
    return 0


def format_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """A plain-text table of ``rows`` with ``(key, header)`` columns; floats to 4 places."""
    cells = [[h for _, h in columns]]
    for r in rows:
        cells.append([f"{r[k]:.4f}" if isinstance(r.get(k), float) else str(r.get(k, "")) for k, _ in columns])
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """The main job: every notebook, executed headless, with its HTML export and numbers.

    A notebook that fails keeps its earlier results and is reported; the others still run.
    ``summary.json`` and ``index.html`` describe what is in ``--out`` afterwards, the results of
    earlier runs of notebooks not run now and every failure included. Exit code 1 if any failed."""
    from .runner import declared_parameters

    from .io import check_writable
    from .report import write_index
    from .runner import output_lock

    notebooks = sorted(Path(args.notebooks).glob("[0-9][0-9]_*.ipynb"))
    chosen = [nb for nb in notebooks if not args.only or any(nb.name.startswith(o) for o in args.only)]
    if not chosen:
        print(f"error: no notebooks to run in {args.notebooks}", file=sys.stderr)
        return 2
    parameters = {name: _literal(value) for name, value in args.parameter}
    if "output_dir" in parameters:  # each notebook's folder is <--out>/<its name>, so that the summary describes it
        print("error: -p output_dir: the main job sets each notebook's output_dir under --out; pass --out instead",
              file=sys.stderr)
        return 2
    # -p applies to every notebook that declares the parameter; one that none declares is a typo
    declared, unreadable = {}, {}
    for nb in chosen:
        try:
            declared[nb] = set(declared_parameters(nb))
        except Exception as e:  # an empty or corrupt .ipynb: said, and the others still run
            unreadable[nb.stem] = {"failed": f"{nb}: not a readable notebook ({_one_line(e)})"}
            print(f"  FAILED: {unreadable[nb.stem]['failed']}", flush=True)
    chosen = [nb for nb in chosen if nb in declared]
    unknown = sorted(set(parameters) - set().union(*declared.values()))
    if unknown:
        print(f"error: no notebook here takes the parameter{'s' * (len(unknown) > 1)} {', '.join(unknown)}",
              file=sys.stderr)
        return 2
    try:  # an output folder that cannot be written, or one another run writes, is said now
        check_writable(args.out)
        with output_lock(args.out):
            status = {**unreadable, **{nb.stem: run_one(nb, args, {k: v for k, v in parameters.items()
                                                                   if k in declared[nb]}) for nb in chosen}}
            summary = results_on_disk(notebooks, args.out, status)
            write_json_atomic(summary, Path(args.out) / "summary.json")
            print(f"\nnumbers of every notebook: {Path(args.out) / 'summary.json'}")
            print(f"reports of every notebook:  {write_index(summary, args.out)}")
    except (OSError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    failed = [name for name, s in status.items() if "failed" in s]
    if failed:
        print(f"error: {len(failed)} notebook{'s' * (len(failed) > 1)} failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def run_one(nb: Path, args: argparse.Namespace, own: dict) -> dict:
    """Run one notebook of the main job; its status: ``{"ran": True}``, skipped or failed (why)."""
    from .runner import data_parameters, run_notebook

    data, skipped = data_parameters(nb, args.data, own)
    if skipped:
        print(f"skipping {nb.name}: {skipped}", flush=True)
        return {"skipped": skipped}
    print(f"running {nb} ...", flush=True)
    try:
        result = run_notebook(nb, args.out, {**data, **own}, progress=not args.no_progress)
    except Exception as e:  # the next notebooks still run; this one kept its earlier results
        print(f"  FAILED: {_one_line(e)}\n  its cells as run: "
              f"{Path(args.out) / nb.stem / (nb.stem + '.failed.ipynb')}", flush=True)
        return {"failed": _one_line(e)}
    print(f"  executed notebook: {result['notebook']}\n  HTML report:       {result['html']}")
    return {"ran": True}


def _one_line(error: Exception) -> str:
    """A notebook's error as one line: the exception the cell raised and its message."""
    name, value = getattr(error, "ename", type(error).__name__), getattr(error, "evalue", str(error))
    lines = str(value).strip().splitlines()
    return f"{name}: {lines[-1] if lines else ''}"


def results_on_disk(notebooks: list[Path], out: str | os.PathLike, status: dict[str, dict]) -> dict[str, dict]:
    """What ``out`` holds for each notebook, as the summary says it: the executed copy, HTML and
    numbers found there (``"from_earlier_run"`` when not run now), and this run's skip or failure."""
    summary = {}
    for nb in notebooks:
        run_dir = Path(out) / nb.stem
        executed, html, metrics = run_dir / nb.name, run_dir / f"{nb.stem}.html", run_dir / "metrics.json"
        entry = dict(status.get(nb.stem, {}))
        entry.pop("ran", None)
        if executed.is_file() and html.is_file():
            entry.update(notebook=str(executed), html=str(html),
                         metrics=json.loads(metrics.read_text()) if metrics.is_file() else {})
            if not status.get(nb.stem, {}).get("ran"):  # not run now, or skipped or failed: an earlier run's
                entry["from_earlier_run"] = True
        if "failed" in entry and (run_dir / f"{nb.stem}.failed.ipynb").is_file():
            entry["failed_notebook"] = str(run_dir / f"{nb.stem}.failed.ipynb")
        if entry:
            summary[nb.stem] = entry
    return summary


def _literal(text: str):
    """A parameter value from the command line: JSON if it parses (numbers, lists), else a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def compare(args: argparse.Namespace) -> int:
    """The five models on selection-variable data, next to the Bayes limit, as a table."""
    from .io import check_writable
    from .runner import check_parameter
    from .simulate import SelectionModel
    from .tasks import synthetic
    from .inference import resolve_device
    from .protocol import compare_models

    try:  # a bad setting (e.g. --inter nan) in one line, before any sampling
        sim = SelectionModel(n_classes=args.classes, dims=tuple(args.dims), intra=tuple(args.intra),
                             inter=args.inter, seed=args.seed)
        for name in ("n_train", "n_valid", "n_test", "epochs", "patience", "batch_size", "hidden"):
            check_parameter(f"--{name.replace('_', '-')}", getattr(args, name), kind=int, low=1)
        resolve_device(args.device)
        check_writable(args.out)  # now, not after the training
        if Path(args.out).exists() and not Path(args.out).is_dir():
            raise ValueError(f"{args.out}: is a file; --out names the folder for the results")
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    batches = {"train": sim.sample(args.n_train), "valid": sim.sample(args.n_valid), "test": sim.sample(args.n_test)}
    data = {name: synthetic.dataset(b) for name, b in batches.items()}
    bayes = sim.bayes_accuracy(batches["test"])
    rows = compare_models(
        lambda: synthetic.build_model(sim.dims, sim.n_classes, args.hidden),
        data["train"], data["valid"], data["test"],
        epochs=args.epochs, batch_size=args.batch_size, monitor="accuracy", patience=args.patience,
        regime=args.regime, device=args.device, seed=args.seed, progress=not args.no_progress,
    )
    for r in rows:
        r["of_bayes"] = r["accuracy"] / bayes
    print(f"\nSelection-variable data: {args.classes} classes, dims {tuple(args.dims)}, intra "
          f"{tuple(args.intra)}, inter {args.inter}; {args.n_train} train / {args.n_test} test "
          f"samples (acceptance {batches['train'].acceptance:.2f}). Bayes accuracy {bayes:.4f}.\n")
    print(format_table(rows, [("model", "model"), ("accuracy", "accuracy"), ("of_bayes", "of Bayes"),
                              ("auroc", "AUROC"), ("nll", "NLL"), ("ece", "ECE"),
                              ("best_epoch", "best epoch"), ("train_seconds", "train s")]))
    out = Path(args.out) / "synthetic_results.json"
    write_json_atomic({"config": vars(args), "bayes_accuracy": bayes, "models": rows}, out)
    print(f"\nwrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="i2m2kit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("doctor", help="check the installed torch build against this machine")
    n = sub.add_parser("run", help="the main job: execute the notebooks, export HTML, gather numbers")
    n.add_argument("--out", default="outputs", help="folder for executed notebooks and reports (default: outputs)")
    n.add_argument("--notebooks", default="notebooks", help="folder of the numbered notebooks (default: notebooks)")
    n.add_argument("--data", default=os.environ.get("I2M2KIT_DATA", "../shared/data"),
                   help="folder holding each benchmark's raw data (default: $I2M2KIT_DATA or ../shared/data, "
                        "relative to here or to the repository)")
    n.add_argument("--only", nargs="*", help="run only notebooks whose names start with these (e.g. 00)")
    n.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="override a notebook parameter (VALUE read as JSON when it parses)")
    n.add_argument("--no-progress", action="store_true")
    r = sub.add_parser("compare", help="uni-modal, intra, inter and I2M2 against the Bayes limit, as a table")
    r.add_argument("--out", default="outputs", help="folder for the results (default: outputs)")
    r.add_argument("--classes", type=int, default=2)
    r.add_argument("--dims", type=int, nargs=2, default=(8, 8), metavar=("D_X", "D_X2"))
    r.add_argument("--intra", type=float, nargs=2, default=(1.0, 1.0), metavar=("S_X", "S_X2"))
    r.add_argument("--inter", type=float, default=3.0)
    r.add_argument("--n-train", type=int, default=20_000)
    r.add_argument("--n-valid", type=int, default=5_000)
    r.add_argument("--n-test", type=int, default=20_000)
    r.add_argument("--epochs", type=int, default=20)
    r.add_argument("--patience", type=int, default=5)
    r.add_argument("--batch-size", type=int, default=128)
    r.add_argument("--hidden", type=int, default=64)
    r.add_argument("--regime", default="joint", choices=["joint", "pretrain_finetune"])
    r.add_argument("--device", default="auto")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        return {"doctor": lambda a: doctor(), "run": run, "compare": compare}[args.command](args)
    except KeyboardInterrupt:  # Ctrl-C: one line; every output was written atomically, the earlier ones stand
        print("interrupted: nothing half-written is left; earlier results are as they were", file=sys.stderr)
        return 130
