"""The main job is atomic at every level, refuses a second run into its folder, cleans what a
killed run left, and never reuses prepared data made from other input (tiny notebooks and a
tiny data script, so that each case runs in seconds)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from i2m2kit.io import check_writable
from i2m2kit.runner import output_lock, prepare_data

ROOT = Path(__file__).resolve().parents[1]

# a notebook that writes its numbers, fails when told, or waits for a file (to be killed midway)
CELLS = ["value = 1\nfail = False\nwait_for = None\noutput_dir = '.'",
         "import json, pathlib, time\n"
         "while wait_for and not pathlib.Path(wait_for).exists():\n    time.sleep(0.1)\n"
         "pathlib.Path(output_dir).mkdir(parents=True, exist_ok=True)\n"
         "(pathlib.Path(output_dir) / 'metrics.json').write_text(json.dumps({'value': value}))\n"
         "assert not fail, 'told to fail'"]


def write_notebooks(folder: Path, names=("00_first", "01_second")) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_code_cell(CELLS[0], metadata={"tags": ["parameters"]}),
                    nbformat.v4.new_code_cell(CELLS[1])]
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nb.metadata["language_info"] = {"name": "python"}
        nbformat.write(nb, folder / f"{name}.ipynb")
    return folder


def main_job(notebooks: Path, out: Path, *arguments: str, **popen) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "i2m2kit", "run", "--notebooks", str(notebooks), "--out", str(out),
               "--no-progress", *arguments]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, cwd=ROOT, **popen)


def snapshot(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run_dir.iterdir()) if p.is_file()}


def test_a_failing_rerun_keeps_the_good_results_and_the_other_notebooks_still_run(tmp_path):
    notebooks, out = write_notebooks(tmp_path / "nb"), tmp_path / "out"
    first = main_job(notebooks, out, "-p", "value", "1")
    assert first.returncode == 0, first.stderr
    good = {name: snapshot(out / name) for name in ("00_first", "01_second")}
    assert set(good["00_first"]) == {"00_first.ipynb", "00_first.html", "metrics.json"}

    again = main_job(notebooks, out, "-p", "value", "2", "-p", "fail", "true")
    assert again.returncode == 1 and "2 notebooks failed: 00_first, 01_second" in again.stderr
    assert "FAILED: AssertionError: told to fail" in again.stdout
    for name in ("00_first", "01_second"):  # both ran (the first failure did not stop the job)
        kept = snapshot(out / name)
        assert kept.pop(f"{name}.failed.ipynb")  # the failed cells, to read the error in
        assert kept == good[name] and json.loads(kept["metrics.json"]) == {"value": 1}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["00_first"]["failed"] == "AssertionError: told to fail"
    assert summary["00_first"]["from_earlier_run"] and summary["00_first"]["metrics"] == {"value": 1}
    index = (out / "index.html").read_text()
    assert "failed: AssertionError: told to fail" in index and "from an earlier run" in index

    fixed = main_job(notebooks, out, "--only", "01", "-p", "value", "3")
    assert fixed.returncode == 0, fixed.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["01_second"]["metrics"] == {"value": 3} and "from_earlier_run" not in summary["01_second"]
    assert not (out / "01_second" / "01_second.failed.ipynb").exists()
    # the notebook not run now is still described as what is on disk: its earlier good results
    assert summary["00_first"]["metrics"] == {"value": 1} and summary["00_first"]["from_earlier_run"]


def test_a_second_run_into_the_same_folder_is_refused_at_once(tmp_path):
    notebooks, out = write_notebooks(tmp_path / "nb"), tmp_path / "out"
    with output_lock(out):
        started = time.perf_counter()
        second = main_job(notebooks, out)
    assert second.returncode == 2 and "another i2m2kit run" in second.stderr and str(os.getpid()) in second.stderr
    assert time.perf_counter() - started < 30 and not (out / "00_first").exists()
    assert main_job(notebooks, out).returncode == 0  # the lock went with its holder


def midway(tmp_path, value: str) -> tuple[Path, dict[str, bytes], subprocess.Popen]:
    """A good run of one notebook, then a second one stopped inside its cells (it waits for a
    file that never comes): the output folder, the good run's files, the waiting job."""
    notebooks, out = write_notebooks(tmp_path / "nb", names=("00_first",)), tmp_path / "out"
    assert main_job(notebooks, out).returncode == 0
    good = snapshot(out / "00_first")
    command = [sys.executable, "-m", "i2m2kit", "run", "--notebooks", str(notebooks), "--out", str(out),
               "--no-progress", "-p", "value", value, "-p", "wait_for", str(tmp_path / "never")]
    job = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)  # its own group, to signal as a terminal would
    deadline = time.time() + 120
    while not list((out / "00_first").glob(".stage-*")) and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1)
    return out, good, job


def test_a_killed_run_is_cleaned_up_by_the_next(tmp_path):
    out, good, job = midway(tmp_path, "9")
    notebooks = tmp_path / "nb"
    os.killpg(job.pid, signal.SIGKILL)  # no clean-up runs: the kernel and the runner die at once
    job.wait()
    assert list((out / "00_first").glob(".stage-*")) and not (out / "00_first" / "metrics.json").exists()

    again = main_job(notebooks, out, "-p", "value", "9", "-p", "fail", "true")
    assert "restored the metrics.json a killed run had set aside" in again.stdout
    assert "removed .stage-" in again.stdout
    kept = snapshot(out / "00_first")
    kept.pop("00_first.failed.ipynb")
    assert kept == good and not list((out / "00_first").glob(".*"))


def test_an_output_folder_that_cannot_be_written_is_refused_before_the_work(tmp_path):
    notebooks = write_notebooks(tmp_path / "nb")
    (tmp_path / "a-file").write_text("not a folder")
    proc = main_job(notebooks, tmp_path / "a-file" / "out")
    assert proc.returncode == 2 and "cannot write there" in proc.stderr and proc.stderr.count("\n") == 1
    with pytest.raises(OSError, match="a mount point cannot be replaced"):
        check_writable("/")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    proc = main_job(notebooks, tmp_path / "loop")
    assert proc.returncode == 2 and "loop" in proc.stderr and proc.stderr.count("\n") == 1


SCRIPT = """import argparse, json, pathlib
p = argparse.ArgumentParser(); p.add_argument('--raw'); p.add_argument('--out'); p.add_argument('--size', default='1')
a = p.parse_args()
out = pathlib.Path(a.out); out.mkdir(parents=True)
text = ''.join(f.read_text() for f in sorted(pathlib.Path(a.raw).glob('*.txt')))
(out / 'data.txt').write_text(text * int(a.size))
(out / 'metadata.json').write_text(json.dumps({'size': int(a.size)}))
print('prepared')
"""


@pytest.fixture
def fake_script(tmp_path):
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "prepare_fake.py").write_text(SCRIPT)
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "a.txt").write_text("first data set")
    return scripts, raw


def test_prepared_data_is_reused_only_when_made_from_the_same_input(tmp_path, fake_script, capsys):
    scripts, raw = fake_script
    out = tmp_path / "prepared"
    prepare_data("fake", raw, out, scripts=scripts)
    assert (out / "data.txt").read_text() == "first data set"
    assert json.loads((out / "metadata.json").read_text())["fingerprint"]["raw"] == str(raw.resolve())
    prepare_data("fake", raw, out, scripts=scripts)
    assert "reusing the prepared data" in capsys.readouterr().out

    other = tmp_path / "other"
    other.mkdir()
    (other / "a.txt").write_text("second data set")
    with pytest.raises(ValueError, match=r"prepared from other input or settings \(raw: .*other.*delete the folder"):
        prepare_data("fake", other, out, scripts=scripts)
    with pytest.raises(ValueError, match=r"arguments: \[\] -> \['--size', '2'\]"):
        prepare_data("fake", raw, out, args=("--size", "2"), scripts=scripts)
    (raw / "a.txt").write_text("first data set, edited")
    with pytest.raises(ValueError, match=r"raw files \(names, sizes or times\) changed"):
        prepare_data("fake", raw, out, scripts=scripts)
    (scripts / "prepare_fake.py").write_text(SCRIPT + "# changed\n")
    with pytest.raises(ValueError, match="script_sha256"):
        prepare_data("fake", raw, out, scripts=scripts)
    assert (out / "data.txt").read_text() == "first data set"  # nothing was replaced


def test_prepared_data_without_raw_files_or_fingerprint_is_used_as_recorded_and_said(tmp_path, fake_script, capsys):
    scripts, raw = fake_script
    out = tmp_path / "prepared"
    prepare_data("fake", raw, out, scripts=scripts)
    capsys.readouterr()
    prepare_data("fake", None, out, scripts=scripts)
    assert "the raw files are not here to check" in capsys.readouterr().out
    with pytest.raises(ValueError, match="arguments"):  # the settings are still checked
        prepare_data("fake", None, out, args=("--size", "3"), scripts=scripts)
    release = tmp_path / "release"
    release.mkdir()
    (release / "metadata.json").write_text("{}")
    prepare_data("fake", raw, release, scripts=scripts)
    assert "built outside this runner: its origin is not checked" in capsys.readouterr().out


def test_atomic_writes_never_replace_each_other_and_clean_up_after_killed_writers(tmp_path):
    from i2m2kit.io import atomic_path

    target = tmp_path / "result"
    with pytest.raises(FileExistsError, match="written by another run meanwhile"):
        with atomic_path(target) as tmp:
            tmp.mkdir()
            target.mkdir()  # another run finished first
            (target / "theirs").write_text("kept")
    assert [p.name for p in target.iterdir()] == ["theirs"]
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f".other.tmp-{dead.pid}-x").mkdir()  # a writer killed with SIGKILL left this
    (tmp_path / f".other.tmp-{os.getpid()}-y").mkdir()  # a writer still alive (this one)
    with atomic_path(tmp_path / "other") as tmp:
        tmp.write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".other.tmp-{os.getpid()}-y", "other", "result"]


def test_a_corrupt_notebook_is_one_failure_and_the_others_still_run(tmp_path):
    notebooks, out = write_notebooks(tmp_path / "nb"), tmp_path / "out"
    (notebooks / "02_broken.ipynb").write_text("{not json")
    proc = main_job(notebooks, out)
    assert proc.returncode == 1 and "1 notebook failed: 02_broken" in proc.stderr and "Traceback" not in proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert "not a readable notebook" in summary["02_broken"]["failed"]
    assert summary["00_first"]["metrics"] == {"value": 1} == summary["01_second"]["metrics"]


def test_the_main_job_sets_output_dir_itself(tmp_path):
    proc = main_job(write_notebooks(tmp_path / "nb"), tmp_path / "out", "-p", "output_dir", str(tmp_path / "elsewhere"))
    assert proc.returncode == 2 and "-p output_dir" in proc.stderr and "pass --out instead" in proc.stderr
    assert not (tmp_path / "elsewhere").exists()


def test_ctrl_c_is_one_line_and_keeps_the_earlier_results(tmp_path):
    out, good, job = midway(tmp_path, "5")
    os.killpg(job.pid, signal.SIGINT)  # as Ctrl-C in a terminal: the whole foreground group
    _, err = job.communicate(timeout=120)
    # the runner's own words: one line (the kernel, interrupted mid-cell, may still log its own)
    assert job.returncode == 130 and "i2m2kit/cli.py" not in err and err.strip().splitlines()[-1].startswith("interrupted:")
    kept = snapshot(out / "00_first")
    kept.pop("00_first.failed.ipynb", None)
    assert kept == good


def test_a_compare_into_a_file_is_refused_before_training(tmp_path):
    (tmp_path / "results").write_text("mine")
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "i2m2kit", "compare", "--out", str(tmp_path / "results"),
                           "--no-progress"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "results" in proc.stderr
    assert time.perf_counter() - started < 60 and (tmp_path / "results").read_text() == "mine"


def test_an_atomic_write_through_a_link_writes_the_target_and_keeps_the_link(tmp_path):
    from i2m2kit.io import atomic_path

    (tmp_path / "big-disk").mkdir()
    (tmp_path / "big-disk" / "old").write_text("old")
    (tmp_path / "out").symlink_to(tmp_path / "big-disk")
    with atomic_path(tmp_path / "out") as tmp:
        tmp.mkdir()
        (tmp / "new").write_text("new")
    assert (tmp_path / "out").is_symlink() and [p.name for p in (tmp_path / "big-disk").iterdir()] == ["new"]


def test_a_damaged_metadata_file_is_named(tmp_path, fake_script):
    scripts, raw = fake_script
    out = tmp_path / "prepared"
    out.mkdir()
    (out / "metadata.json").write_text("")
    with pytest.raises(ValueError, match=r"prepared/metadata.json: not a readable metadata file"):
        prepare_data("fake", raw, out, scripts=scripts)
