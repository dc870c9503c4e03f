"""The main job, as `make run` calls it, at test size."""

import json
import subprocess
import sys


def test_main_job_prints_the_five_models_next_to_the_bayes_limit(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "i2m2kit", "compare", "--out", str(tmp_path), "--n-train", "3000",
         "--n-valid", "1000", "--n-test", "3000", "--epochs", "4", "--hidden", "16", "--no-progress"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    table = proc.stdout
    for name in ("uni:x", "uni:x2", "intra", "inter", "i2m2", "Bayes accuracy"):
        assert name in table
    results = json.loads((tmp_path / "synthetic_results.json").read_text())
    accuracy = {r["model"]: r["accuracy"] for r in results["models"]}
    assert len(accuracy) == 5
    assert 0.5 < accuracy["i2m2"] <= results["bayes_accuracy"] + 0.03
    assert "UserWarning" not in proc.stderr
