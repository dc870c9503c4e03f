"""What the data scripts' tests share: the script under test as a fixture, and the faults they
simulate: a folder that takes no file, a full disk, a real small disk, a script run in a
process of its own, an input that cannot be opened. The tests run as root, for whom no
permission bit blocks anything, so the faults are simulated."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import load_data_script

ROOT = Path(__file__).resolve().parents[1]


def script_fixture(name: str):
    """The fixture ``prep``: data_scripts/<name>.py as a module, loaded once for the test module
    (``prep = script_fixture("prepare_mimic")``)."""
    @pytest.fixture(scope="module", name="prep")
    def prep():
        return load_data_script(name)
    return prep


def refuse_writes_in(monkeypatch, folder: Path) -> None:
    """``folder`` takes no new file, as a folder without write permission does for anyone but root."""
    real = tempfile.TemporaryFile

    def temporary_file(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == folder:
            raise PermissionError(errno.EACCES, "Permission denied", str(dir))
        return real(*args, dir=dir, **kwargs)
    monkeypatch.setattr(tempfile, "TemporaryFile", temporary_file)


def disk_full(fd, offset, length):
    raise OSError(errno.ENOSPC, "No space left on device")


@contextlib.contextmanager
def small_tmpfs(folder: Path, size: str):
    """A real, small disk mounted at ``folder``, to fill for real (root only, where mount is allowed)."""
    if os.name != "posix" or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


RUN_SCRIPT = """import runpy, shutil, sys
if sys.argv[1] == "lie":  # say there is room, so that the disk fills while the output is written
    real = shutil.disk_usage
    shutil.disk_usage = lambda path: real(path)._replace(free=1 << 40)
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_script(script: str, args: list[str], lie_about_room: bool = False) -> subprocess.CompletedProcess:
    """A data script in a process of its own: a bus error would kill it, not the test session."""
    return subprocess.run([sys.executable, "-c", RUN_SCRIPT, "lie" if lie_about_room else "truth",
                           str(ROOT / "data_scripts" / f"{script}.py"), *args], capture_output=True, text=True, cwd=ROOT)


def bad_output_location(case: str, out: Path, monkeypatch) -> str | None:
    """Make ``out`` (in an existing, empty parent) the bad output location ``case`` names:
    "unwritable parent", "mount point" or "--out a link loop"; return the start of the error
    that names it (None for any other case, which the test sets up itself)."""
    parent = out.parent
    if case == "unwritable parent":
        refuse_writes_in(monkeypatch, parent)
        return f"{parent}: cannot write there (Permission denied)"
    if case == "mount point":
        real = os.path.ismount
        monkeypatch.setattr(os.path, "ismount", lambda path: Path(path) == out or real(path))
        return f"{out}: a mount point cannot be replaced; name a folder inside it"
    if case == "--out a link loop":
        out.symlink_to(out)
        return f"{out}: "
    return None


def refuse_open(monkeypatch, module, name: str) -> None:
    """``module``'s own ``open()`` refuses the file called ``name``, as a file without read
    permission does for anyone but root."""
    real_open = open

    def refuse(path, *args, **kwargs):
        if Path(path).name == name:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(module, "open", refuse, raising=False)  # the script's open(), not pytest's
