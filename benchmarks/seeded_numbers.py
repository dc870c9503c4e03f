"""Every notebook's seeded numbers at test size, kept and compared: a refactor must not move them.

    python benchmarks/seeded_numbers.py capture OUT [--notebooks 02 02m 03]   # run, keep OUT/<key>.json
    python benchmarks/seeded_numbers.py compare BEFORE AFTER                   # every number, side by side

``capture`` runs each notebook headless with the parameters its tests use (the real data of
``--shared``; notebook 03 on the tests' miniature fastMRI files) and keeps its
``metrics.json`` without the fields that are not seeded (seconds, paths). ``compare`` prints
each key whose value differs and exits 1 when any does.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NOT_SEEDED = ("seconds", "time", "path", "folder", "dir")  # a key holding one of these is left out


def runs(shared: Path, work: Path) -> dict[str, tuple[str, dict[str, Any]]]:
    """key -> (notebook, parameters): the test-size runs of tests/test_notebook_*.py."""
    def fastmri_raw() -> str:
        sys.path.insert(0, str(ROOT / "tests"))
        from fastmri_files import write_miniature_set  # the tests' miniature k-space files
        folder = work / "fastmri_raw"
        if not folder.exists():
            write_miniature_set(folder, shared / "fastmri_plus" / "knee.csv")
        return str(folder)

    return {
        "00": ("00_selection_variable", {"n_train": 1000, "n_valid": 500, "n_test": 2000, "epochs": 2, "patience": 1,
                                         "hidden": 8, "grid_intra": [0.0, 1.0], "grid_inter": [0.0, 2.0],
                                         "hard_sizes": [300], "hard_inter": [2.0]}),
        "01": ("01_avmnist", {"raw_dir": str(shared), "n_train": 400, "n_test": 200, "valid_size": 100, "epochs": 1,
                              "seeds": [0]}),
        "02": ("02_icu", {"data_dir": str(shared / "physionet2012"), "stays": 400, "epochs": 1, "seeds": [0]}),
        "02m": ("02_icu", {"dataset": "mimic", "data_dir": str(shared / "mimic3_demo"), "epochs": 2, "seeds": [0]}),
        "03": ("03_fastmri", lambda: {"data_dir": fastmri_raw(), "annotations_dir": str(shared / "fastmri_plus"),
                                      "split_seed": 27, "epochs": 1, "patience": 1, "width": 4, "downsample": 8,
                                      "batch_size": 32}),
        "04": ("04_vqa", {"image_size": 8, "epochs": 1, "seeds": [0], "n_train": 300, "n_test": 300,
                          "backbone": "scratch"}),
        "05": ("05_nlvr", {"data_dir": str(shared / "nlvr" / "nlvr1"), "backbone": "scratch", "downsample": 10,
                           "epochs": 1, "seeds": [0], "n_train": 256}),
    }


def seeded(value: Any) -> Any:
    """``value`` without the keys that are not seeded, at any depth."""
    if isinstance(value, dict):
        return {k: seeded(v) for k, v in value.items() if not any(w in k.lower() for w in NOT_SEEDED)}
    if isinstance(value, list):
        return [seeded(v) for v in value]
    return value


def flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in flat(item, f"{prefix}{key}.").items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in flat(item, f"{prefix}{i}.").items()}
    return {prefix.rstrip("."): value}


def same(a: Any, b: Any) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def capture(out: Path, keys: list[str], shared: Path) -> None:
    from i2m2kit.runner import run_notebook

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        table = runs(shared, Path(tmp))
        for key in keys:
            notebook, parameters = table[key]
            parameters = parameters() if callable(parameters) else parameters
            result = run_notebook(ROOT / "notebooks" / f"{notebook}.ipynb", Path(tmp) / key, parameters, progress=False)
            (out / f"{key}.json").write_text(json.dumps(seeded(result["metrics"]), indent=1, sort_keys=True))
            print(f"{key}: {notebook} -> {out / f'{key}.json'}", flush=True)


def compare(before: Path, after: Path) -> int:
    differences = 0
    for file in sorted(before.glob("*.json")):
        other = after / file.name
        if not other.exists():
            print(f"{file.stem}: not captured in {after}")
            differences += 1
            continue
        a, b = flat(json.loads(file.read_text())), flat(json.loads(other.read_text()))
        changed = [k for k in sorted(set(a) | set(b)) if not same(a.get(k, "<absent>"), b.get(k, "<absent>"))]
        print(f"{file.stem}: {len(a)} numbers, " + (f"{len(changed)} differ" if changed else "identical"))
        for k in changed:
            print(f"    {k}: {a.get(k, '<absent>')} -> {b.get(k, '<absent>')}")
        differences += len(changed)
    return 1 if differences else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("capture")
    run.add_argument("out", type=Path)
    run.add_argument("--notebooks", nargs="+", default=["00", "01", "02", "02m", "03", "04", "05"])
    run.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    both = sub.add_parser("compare")
    both.add_argument("before", type=Path)
    both.add_argument("after", type=Path)
    args = parser.parse_args()
    if args.command == "capture":
        capture(args.out, args.notebooks, args.shared)
        return 0
    return compare(args.before, args.after)


if __name__ == "__main__":
    sys.exit(main())
