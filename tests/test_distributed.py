"""Training across processes (torchrun, gloo on CPU) and through a killed process."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "train_script.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run(args, launcher=(sys.executable,), timeout=300):
    proc = subprocess.run([*launcher, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=ENV, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]


def result(folder: Path):
    return json.loads((folder / "result.json").read_text()), torch.load(folder / "state.pt", weights_only=True)


def test_two_processes_under_torchrun_train_the_same_model_as_one(tmp_path):
    """Same global batch (63: odd, so the ranks' shares differ, and a smaller last batch): the
    two ranks together take the same steps as one process."""
    run(["--out", tmp_path / "one"])
    torchrun = (str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node=2")
    run(["--out", tmp_path / "two", "--checkpoint-dir", tmp_path / "ck"], launcher=torchrun)
    one, one_state = result(tmp_path / "one")
    two, two_state = result(tmp_path / "two")
    assert (one["world_size"], two["world_size"]) == (1, 2)
    for k in one_state:
        torch.testing.assert_close(two_state[k], one_state[k], rtol=1e-5, atol=1e-6)
    assert [r["phase"] for r in two["history"]] == [r["phase"] for r in one["history"]]
    for a, b in zip(one["history"], two["history"]):  # losses reduced over ranks, metrics over all samples
        assert (a["train_loss"] is None) == (b["train_loss"] is None)
        if a["train_loss"] is not None:
            assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
        assert b["valid_accuracy"] == pytest.approx(a["valid_accuracy"], abs=1e-3)
    assert two["test"]["accuracy"] == pytest.approx(one["test"]["accuracy"], abs=1e-3)
    # rank 0 alone wrote the checkpoints, whole
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["last.pt", "model.pt"]
    for k, v in torch.load(tmp_path / "ck" / "model.pt", weights_only=True).items():
        torch.testing.assert_close(v, two_state[k])


def test_a_run_killed_mid_epoch_resumes_to_the_same_result(tmp_path):
    args = ["--n-train", 20000, "--epochs", 3, "--batch-size", 32, "--regime", "joint"]
    run([*args, "--out", tmp_path / "whole"])
    ck = tmp_path / "ck"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), *map(str, args), "--out", tmp_path / "killed",
                             "--checkpoint-dir", ck], env=ENV, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not (ck / "last.pt").exists():  # the first epoch's checkpoint
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.time() < deadline, "no checkpoint after 240 s"
        time.sleep(0.05)
    time.sleep(0.5)  # into the second epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed" / "result.json").exists()  # it died before finishing
    state = torch.load(ck / "last.pt", weights_only=True)  # loads: never half-written
    assert state["phase"] == 0 and 1 <= state["epoch"] < 3
    assert not [p for p in ck.iterdir() if p.name not in ("last.pt",)]  # no temporary leftovers
    run([*args, "--out", tmp_path / "resumed", "--checkpoint-dir", ck, "--resume"])
    whole, whole_state = result(tmp_path / "whole")
    resumed, resumed_state = result(tmp_path / "resumed")
    assert resumed["history"] == whole["history"] and resumed["test"] == whole["test"]
    for k in whole_state:
        assert torch.equal(resumed_state[k], whole_state[k]), k
