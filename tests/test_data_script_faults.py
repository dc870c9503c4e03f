"""Faults every data script meets the same way (AV-MNIST, MIMIC-III, NLVR, PhysioNet 2012): an
output location that cannot take the result (unwritable, a mount point, a symbolic link loop,
too little room) is refused before the work; a disk that fills up while writing ends in one
line and leaves nothing behind; a symbolic link loop as --raw is one line; the leftover of a
killed run is removed by the next one; a bad setting is refused before any input is read.

In-process (``main(argv)``) so that the faults can be simulated: the tests run as root, for
whom no permission bit blocks anything."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import types
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import load_data_script


@dataclass
class Script:
    raw: str  # which small raw folder (see the ``raws`` fixture)
    args: tuple[str, ...]  # to keep the run short
    first_read: str  # the function that reads the first input
    work: str  # the first step of the work that the free-space check precedes
    writer: str  # the numpy function that writes the arrays


SCRIPTS = {
    "prepare_avmnist": Script("avmnist", ("--n-train", "20", "--n-test", "20"), "load_noise_clips",
                              "load_noise_clips", "save"),
    "prepare_mimic": Script("mimic", (), "open_tables", "read_events", "savez_compressed"),
    "prepare_nlvr": Script("nlvr", ("--downsample", "10"), "split_file", "render", "save"),
    "prepare_physionet2012": Script("physionet", (), "record_files", "prepare_set", "savez_compressed"),
}


@pytest.fixture(scope="module")
def raws(shared_data, tmp_path_factory) -> dict[str, Path]:
    """Small raw folders: the real files, NLVR and PhysioNet cut to a few examples."""
    root = tmp_path_factory.mktemp("raws")
    nlvr = root / "nlvr"
    nlvr.mkdir()
    for name in ("train_partial.json", "dev.json", "test.json"):
        lines = (shared_data / "nlvr" / "nlvr1" / name).read_text().splitlines()[:3]
        (nlvr / name).write_text("\n".join(lines) + "\n")
    physionet = root / "physionet"
    (physionet / "set-a").mkdir(parents=True)
    with tarfile.open(shared_data / "physionet2012" / "set-a.tar.gz") as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile() and m.name.endswith(".txt")), key=lambda m: m.name)
        for m in members[:20]:
            (physionet / "set-a" / Path(m.name).name).write_bytes(tar.extractfile(m).read())
    ids = {p.stem for p in (physionet / "set-a").iterdir()}
    outcomes = (shared_data / "physionet2012" / "Outcomes-a.txt").read_text().splitlines()
    (physionet / "Outcomes-a.txt").write_text("\n".join(l for i, l in enumerate(outcomes)
                                                        if i == 0 or l.split(",")[0] in ids) + "\n")
    return {"avmnist": shared_data, "mimic": shared_data / "mimic3_demo", "nlvr": nlvr, "physionet": physionet}


@pytest.fixture(params=sorted(SCRIPTS))
def script(request, raws):
    """(the script's module, its settings, a function (out, *more, raw=None) -> argv: small raw, no progress)."""
    name = request.param
    spec = SCRIPTS[name]

    def argv(out: Path, *more: str, raw: Path | None = None) -> list[str]:
        return ["--raw", str(raw or raws[spec.raw]), "--out", str(out), *spec.args, "--no-progress", *more]

    return load_data_script(name), spec, argv


def run(prep, argv: list[str], capsys) -> tuple[int, str]:
    """The exit status of ``main(argv)`` and its stderr, which must be one line when it failed."""
    status = prep.main(argv)
    err = capsys.readouterr().err
    if status:
        assert err.startswith("error: ") and err.count("\n") == 1, err
    return status, err.strip()


def never_called(*args, **kwargs):
    raise AssertionError("the work started")


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def dead_pid() -> int:
    """The process id of a process that has ended."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# ---------------------------------------------------------------------- the output location


def test_a_symlink_loop_as_out_or_raw_is_one_line(script, tmp_path, capsys):
    prep, _, argv = script
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    status, err = run(prep, argv(loop), capsys)  # as --out: the words vary with Python's version
    assert status == 2 and err.startswith(f"error: {loop}: ")
    assert "Symlink loop from" in err or "a broken or looping symbolic link" in err, err
    status, err = run(prep, argv(tmp_path / "out", raw=loop), capsys)  # as --raw: "not a folder", "no such folder"
    assert status == 2 and err.startswith(f"error: {loop}: ") and "folder" in err, err
    assert not (tmp_path / "out").exists()


def test_an_unwritable_parent_or_a_mount_point_is_refused_before_any_input_is_read(script, tmp_path, capsys,
                                                                                   monkeypatch):
    prep, spec, argv = script
    monkeypatch.setattr(prep, spec.first_read, never_called)
    out = tmp_path / "out"

    def read_only(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    with monkeypatch.context() as m:
        m.setattr(tempfile, "TemporaryFile", read_only)
        assert run(prep, argv(out), capsys) == (2, f"error: {tmp_path}: cannot write there (Permission denied)")
    with monkeypatch.context() as m:
        m.setattr(os.path, "ismount", lambda path: Path(path) == out)
        assert run(prep, argv(out), capsys) == (2, f"error: {out}: a mount point cannot be replaced; "
                                                   f"name a folder inside it")
    assert not out.exists()


def test_too_little_room_is_refused_before_the_work(script, tmp_path, capsys, monkeypatch):
    prep, spec, argv = script
    monkeypatch.setattr(prep, spec.work, never_called)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: types.SimpleNamespace(free=1000))
    status, err = run(prep, argv(tmp_path / "out"), capsys)
    assert status == 2 and err.startswith(f"error: {tmp_path}: 1 KiB free, but the prepared "), err
    assert err.endswith("MiB; free some space or write elsewhere")
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_while_writing_is_one_line_and_leaves_the_earlier_output_and_no_temporary(
        script, tmp_path, capsys, monkeypatch):
    prep, spec, argv = script
    out = tmp_path / "out"
    assert run(prep, argv(out), capsys)[0] == 0
    before = (out / "metadata.json").read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(prep.np, spec.writer, disk_full)
    assert run(prep, argv(out, "--overwrite"), capsys) == (
        2, f"error: {out}: cannot write it (No space left on device); nothing was written")
    assert (out / "metadata.json").read_bytes() == before and hidden(tmp_path) == []


def test_the_leftover_of_a_killed_run_is_removed_by_the_next_one(script, tmp_path, capsys, monkeypatch):
    prep, _, argv = script

    def leftover(pid: int) -> Path:  # as atomic_path names it: .NAME.tmp-PID-random
        folder = tmp_path / f".out.tmp-{pid}-x3k9"
        (folder / "out").mkdir(parents=True)
        (folder / "out" / "big.npy").write_bytes(bytes(1 << 20))
        return folder

    alive = leftover(os.getpid())  # a run still writing: kept
    leftover(dead_pid())
    # removed first, before the free space is measured (it takes space), even by a run that then stops
    with monkeypatch.context() as m:
        m.setattr(shutil, "disk_usage", lambda path: types.SimpleNamespace(free=1000))
        assert run(prep, argv(tmp_path / "out"), capsys)[0] == 2
    assert hidden(tmp_path) == [alive.name]
    leftover(dead_pid())
    assert run(prep, argv(tmp_path / "out"), capsys)[0] == 0
    assert hidden(tmp_path) == [alive.name]
    assert json.loads((tmp_path / "out" / "metadata.json").read_text())


# ---------------------------------------------------------------------- the settings


@pytest.mark.parametrize("name, more, message", [
    ("prepare_avmnist", ["--n-train", "0"], "n_train must be a whole number of at least 1, got 0"),
    ("prepare_avmnist", ["--n-test", "-3"], "n_test must be a whole number of at least 1, got -3"),
    ("prepare_avmnist", ["--image-energy", "nan"], "image_energy must be in (0, 1], got nan"),
    ("prepare_avmnist", ["--image-energy", "0"], "image_energy must be in (0, 1], got 0.0"),
    ("prepare_avmnist", ["--snr-db", "inf"], "snr_db must be a finite number of dB, got inf"),
    ("prepare_nlvr", ["--image-size", "0"], "image size must be an integer in [4, 1024], got 0"),
    ("prepare_physionet2012", ["--sets"],
     "--sets: name at least one of a, b, c (or leave --sets out for every set in --raw)"),
])
def test_a_bad_setting_is_refused_in_one_line_before_any_input_is_read(name, more, message, raws, tmp_path, capsys,
                                                                       monkeypatch):
    prep, spec = load_data_script(name), SCRIPTS[name]
    monkeypatch.setattr(prep, spec.first_read, never_called)
    argv = ["--raw", str(raws[spec.raw]), "--out", str(tmp_path / "out"), *spec.args, "--no-progress", *more]
    assert run(prep, argv, capsys) == (2, f"error: {message}")
    assert list(tmp_path.iterdir()) == []
