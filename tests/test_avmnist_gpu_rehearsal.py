"""benchmarks/avmnist_gpu.py, the one-GPU run of AV-MNIST's published setting, rehearsed on the
CPU at a tiny size: data built from the raw files, the runs as concurrent processes, the JSON."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_script_runs_end_to_end_at_a_tiny_size(shared_data, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "avmnist_gpu.py"), "--raw", str(shared_data),
                           "--out", str(out), "--n-train", "200", "--n-test", "60", "--valid-size", "40",
                           "--epochs", "1", "--timing-pairs", "60", "--seeds", "0", "1", "--regimes", "joint",
                           "--device", "cpu"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["runs_finished"] == 2 and summary["runs_cut_at_budget"] == [] and summary["runs_failed"] == []
    models = {r["model"]: r for r in summary["table"]}
    assert set(models) == {"uni:image", "uni:audio", "intra", "inter", "i2m2"}
    assert all(r["seeds"] == [0, 1] and 0 <= r["accuracy"] <= 1 and r["seconds_per_epoch"] > 0 for r in models.values())
    assert set(summary["epoch_cost_seconds"]) >= {"image", "audio", "joint", "i2m2"}
    run = json.loads((out / "run_joint_0.json").read_text())
    assert run["models"]["i2m2"]["epochs"] == 1 and "seconds_to_published_valid" in run["models"]["i2m2"]
    assert not (tmp_path / ".out-prepared").exists()  # the temporary prepared folder is removed
