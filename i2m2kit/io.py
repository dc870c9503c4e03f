"""Small I/O helpers shared by the package and the data scripts: nothing half-written; and
what every data script shares, its command line and the way it ends."""

from __future__ import annotations

import argparse
import contextlib
import functools
import glob
import hashlib
import http.client
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
from tqdm.auto import tqdm


class PrepareError(Exception):
    """Wrong, missing or truncated input of a data script; the message names the file (and line)."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block succeeds.

    Works for a file or a whole folder (write the folder's contents under the yielded path).
    An existing ``path`` is replaced only at the very end; on error nothing changes.
    """
    path = Path(path)
    if path.is_symlink() and path.exists():  # write where the link points (a bigger disk, say), keep the link
        path = path.resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path)
    # the process id in the name tells a later run whether the writer is still alive
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-{os.getpid()}-")) / path.name
    existed = path.exists()
    try:
        yield tmp
        if path.exists() and not existed:  # two runs into one place must not replace each other silently
            raise FileExistsError(f"{path}: written by another run meanwhile; not replacing it")
        if path.is_dir() and tmp.is_dir():
            old = tmp.parent / f"{path.name}.old"
            os.replace(path, old)  # two renames: the new folder appears whole
            os.replace(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


@contextlib.contextmanager
def exclusive_lock(folder: str | os.PathLike, name: str, holder: str, instead: str) -> Iterator[None]:
    """Hold the lock file ``folder/name`` for a block: a second writer of ``folder`` is refused
    at once, naming the process that holds it (the system releases the lock when a process
    dies, however it dies). ``holder`` says who writes there, ``instead`` what to do."""
    import fcntl

    Path(folder).mkdir(parents=True, exist_ok=True)
    file = Path(folder) / name
    with open(file, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            pid = lock.read().strip() or "unknown"
            raise RuntimeError(f"{folder}: {holder} (pid {pid}) is writing here; wait for it to finish "
                               f"or {instead}") from None
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        try:
            yield
        finally:
            lock.truncate(0)  # the file stays (removing it would let two writers lock two files)


def remove_leftovers(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary folders that killed writers of ``path`` left beside it (a SIGKILL
    runs no clean-up); those of a live process are kept. Returns what was removed."""
    path, removed = Path(path), []
    for leftover in path.parent.glob(f".{glob.escape(path.name)}.tmp-*"):
        if not left_by_dead_process(leftover.name, f".{path.name}.tmp-"):
            continue
        shutil.rmtree(leftover, ignore_errors=True)
        removed.append(leftover)
    return removed


def left_by_dead_process(name: str, prefix: str) -> bool:
    """Is ``name`` (``prefix`` then a process id, then ``-`` or ``.``) a leftover of a process
    that has ended? The names of leftovers carry their writer's pid for this question."""
    pid = name[len(prefix):].split("-")[0].split(".")[0]
    return name.startswith(prefix) and pid.isdigit() and not process_alive(int(pid))


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def check_free_space(folder: str | os.PathLike, need: int, what: str) -> None:
    """Refuse, before the work, to write ``need`` bytes of ``what`` into ``folder`` (or the
    nearest existing folder above it) when its disk has less room; raises OSError naming both."""
    folder = Path(folder).absolute()
    while not folder.exists():
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if free < need:
        raise OSError(f"{folder}: {_size(free)} free, but {what} needs about {_size(need)}; "
                      f"free some space or write elsewhere")


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**20:,.0f} MiB" if nbytes >= 2**20 else f"{nbytes / 2**10:,.0f} KiB"


def check_writable(folder: str | os.PathLike) -> None:
    """Refuse at once, not after the work, an output folder that cannot be written: the nearest
    existing folder at or above it must take a new file (probed), and it must not be a mount
    point or symlink loop (the final rename would fail)."""
    folder = Path(folder)
    try:
        folder.resolve(strict=False)
    except RuntimeError as e:  # symlink loop (Python < 3.13)
        raise OSError(f"{folder}: {e}") from None
    if folder.is_symlink() and not folder.exists():
        raise OSError(f"{folder}: a broken or looping symbolic link")
    if os.path.ismount(folder):
        raise OSError(f"{folder}: a mount point cannot be replaced; name a folder inside it")
    parent = folder.absolute().parent
    while not parent.exists():
        parent = parent.parent
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as e:
        raise OSError(f"{parent}: cannot write there ({e.strerror or e})") from None


def prepare_output(out: str | os.PathLike) -> None:
    """A data script's first step for ``--out``: refuse it now if it cannot be written (not
    after the work), and remove what killed runs left beside it (before free space is measured)."""
    check_writable(out)
    remove_leftovers(out)


@contextlib.contextmanager
def atomic_folder(out: str | os.PathLike) -> Iterator[Path]:
    """``atomic_path`` for an output folder: yields the (created) temporary folder; a write that
    fails (a full disk, say) ends in one line naming ``out``, with nothing left behind."""
    try:
        with atomic_path(out) as tmp:
            tmp.mkdir()
            yield tmp
    except FileExistsError:
        raise
    except OSError as e:
        raise OSError(f"{out}: cannot write it ({e.strerror or e}); nothing was written") from None


def allocated_memmap(file: str | os.PathLike, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
    """``open_memmap`` with the file's blocks allocated at once: on a full disk an OSError naming
    the file, here, rather than SIGBUS (exit 135, no message) at the first page without room."""
    array = np.lib.format.open_memmap(file, mode="w+", dtype=dtype, shape=shape)
    if hasattr(os, "posix_fallocate"):  # not on macOS or Windows
        with open(file, "r+b") as f:
            try:
                os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
            except OSError as e:
                raise OSError(e.errno, e.strerror, str(file)) from None
    return array


def check_input(path: str | os.PathLike, option: str) -> None:
    """An input path that exists but cannot be followed (a symbolic link loop, a folder above it
    that may not be searched), said at once in one line naming the option, not later."""
    try:
        Path(path).stat()
    except FileNotFoundError:
        pass  # the reader says so, with what was expected there
    except OSError as e:
        raise PrepareError(f"{path}: cannot be read ({e.strerror}) ({option})") from None


def fingerprint(raw: str | os.PathLike | None, settings: Any, reads: Iterable[str] = ("**/*",)) -> dict[str, Any]:
    """What made a prepared folder: the raw input's identity (its resolved path and every file's
    name, size and modification time under the ``reads`` patterns, hashed: cheap for gigabytes),
    the settings it was made with, and the package version. Equal fingerprints mean the folder
    may be reused; ``fingerprint_differences`` says what differs."""
    from . import __version__

    identity = hashlib.sha256()
    files = 0
    if raw is not None and Path(raw).exists():
        root = Path(raw).resolve()
        found = sorted({f for pattern in reads for f in root.glob(pattern) if f.is_file()})
        for f in found:
            stat = f.stat()
            identity.update(f"{f.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        files = len(found)
    return {"raw": None if raw is None else str(Path(raw).resolve()),
            "raw_files": files, "raw_identity": identity.hexdigest(),
            "settings": json.loads(json.dumps(settings, default=str)), "version": __version__}


def fingerprint_differences(stored: dict[str, Any], wanted: dict[str, Any],
                            summaries: dict[str, Callable[[dict, dict], list[str]]] | None = None,
                            implied: Iterable[str] = ()) -> list[str]:
    """What differs between two fingerprints, a prepared folder's (``fingerprint``) or a run's
    (``checkpoints.run_fingerprint``), each said 'field: stored -> wanted'. The fields of
    ``settings`` are named by themselves, those of a record within by their path
    (``optimizer.lr``); a record whose ``type`` differs is said by its type alone (its other
    fields are another type's). ``summaries``: field -> function of the two fingerprints giving
    the lines, for a field better said in short (a model's every parameter shape); ``implied``:
    fields that follow from the others, said only when nothing else differs."""
    said = {**_RAW_FILES, **(summaries or {})}
    implied = list(implied)

    def lines(key: str) -> list[str]:
        if key in said:
            return said[key](stored, wanted)
        a, b = stored.get(key), wanted.get(key)
        named_by_themselves = key == "settings" and isinstance(a, dict) and isinstance(b, dict)
        return _record_differences(a, b, "" if named_by_themselves else key)

    out = [line for key in sorted(set(stored) | set(wanted))
           if key not in implied and stored.get(key) != wanted.get(key) for line in lines(key)]
    for key in implied:
        if not out and stored.get(key) != wanted.get(key):
            out += lines(key)
    return out


# a prepared folder's raw files: their identity is a hash, so what is said is their count
_RAW_FILES = {
    "raw_identity": lambda a, b: [f"raw files (names, sizes or times) changed "
                                  f"({a.get('raw_files')} -> {b.get('raw_files')} files)"],
    "raw_files": lambda a, b: [],
}


def _record_differences(a: Any, b: Any, path: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = ["type"] if a.get("type") != b.get("type") else sorted(set(a) | set(b))
        return [line for k in keys if a.get(k) != b.get(k)
                for line in _record_differences(a.get(k), b.get(k), f"{path}.{k}" if path else k)]
    return [f"{path}: {a!r} -> {b!r}"]


def sha256(data: bytes | str | os.PathLike) -> str:
    """The hex digest of ``data``'s bytes, or of the file at the path ``data`` (streamed:
    a file of gigabytes is never held in memory)."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return hashlib.sha256(data).hexdigest()
    digest = hashlib.sha256()
    with open(data, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(urls: list[str], dest: Path, check: Callable[[Path], None], progress: bool = True) -> None:
    """Download ``dest`` from the first URL that works; ``check(path)`` raises PrepareError on bad content.

    The file appears under its name only once checked, so nothing is ever left half-written.
    """
    errors, tmp = [], dest
    for url in urls:
        try:
            with atomic_path(dest) as tmp:
                with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as f:
                    total = response.length
                    with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress) as bar:
                        for block in iter(lambda: response.read(1 << 20), b""):
                            f.write(block)
                            bar.update(len(block))
                if total is not None and tmp.stat().st_size != total:
                    raise PrepareError(f"{dest.name}: truncated download from {url} "
                                       f"({tmp.stat().st_size} of {total} bytes)")
                check(tmp)
            return
        except http.client.IncompleteRead as e:
            errors.append(f"{dest.name}: truncated download from {url} ({len(e.partial)} bytes received)")
        except (urllib.error.URLError, OSError) as e:
            errors.append(f"{dest.name}: download from {url} failed ({e})")
        except PrepareError as e:  # name the file where it would have gone, not the temporary one
            errors.append(str(e).replace(str(tmp), str(dest)))
    raise PrepareError("; ".join(errors))


def write_json_atomic(obj: Any, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=float))


def package_folder(package: str, subfolder: str, holds: str) -> Path | None:
    """A data folder shipped inside an installed package (weights, a data set), found without
    importing the package, or None when the package or the folder's ``holds`` file is missing."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / subfolder
    return folder if (folder / holds).is_file() else None


def read_metadata(folder: str | os.PathLike, build: str) -> dict[str, Any]:
    """A prepared folder's ``metadata.json``; if it is missing, say which command builds it."""
    file = Path(folder) / "metadata.json"
    if not file.is_file():
        raise FileNotFoundError(f"{file}: not found; build the prepared folder with '{build}'")
    return json.loads(file.read_text())


def output_folder_problem(out: str | os.PathLike, overwrite: bool, inputs: Iterable[str | os.PathLike] = (),
                          outputs: Iterable[str] | None = None) -> str | None:
    """Why a data script must not write the folder ``out`` (None if it may): a file is there,
    ``out`` is or holds one of the ``inputs`` (replacing it would delete them), or it holds
    earlier results and ``overwrite`` is not given. ``outputs``: glob patterns of every name
    the script writes; a folder holding anything else is never replaced, ``overwrite`` or not
    (it is not an earlier output of the script but someone's folder)."""
    out = Path(out)
    for path in (out, *map(Path, inputs)):
        try:
            path.resolve()
        except (RuntimeError, OSError) as e:  # a symlink loop (RuntimeError before Python 3.13)
            return f"{path}: cannot be followed ({e})"
    if out.exists() and not out.is_dir():
        return f"{out}: is a file; --out names the output folder"
    for given in inputs:
        if out.resolve() in (Path(given).resolve(), *Path(given).resolve().parents):
            return f"{out}: --out is or holds the input {given}, which writing the output would delete"
    if out.exists() and any(out.iterdir()):
        if outputs is not None:  # recognise our own output: its metadata.json and nothing else
            patterns = list(outputs)
            foreign = sorted(p.name for p in out.iterdir() if not any(p.match(g) for g in patterns))
            if foreign:
                return (f"{out}: holds {', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}, which this "
                        f"script never writes; not replacing it (name a new or empty folder)")
            if not (out / "metadata.json").is_file():
                return f"{out}: has no metadata.json, so it is not an output of this script; not replacing it"
        if not overwrite:
            return f"{out} already exists; pass --overwrite (overwrite=True) to replace it"
    return None


def check_output(out: str | os.PathLike, overwrite: bool, inputs: Iterable[str | os.PathLike] = (),
                 outputs: Iterable[str] | None = None) -> None:
    """Refuse, in one line, an ``out`` that ``output_folder_problem`` says must not be written."""
    if problem := output_folder_problem(out, overwrite, inputs, outputs):
        raise PrepareError(problem)


def read_array(file: str | os.PathLike, mmap_mode: str | None = None) -> np.ndarray:
    """A ``.npy`` array; a truncated, empty or foreign file fails naming it (numpy's errors do not)."""
    try:
        return np.load(file, mmap_mode=mmap_mode, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"{file}: not a readable .npy array ({e})") from None


def class_labels(labels: np.ndarray, n_classes: int, file: str | os.PathLike) -> np.ndarray:
    """``labels`` as int64 class indices; refused, the file named, unless they are one whole
    number in [0, n_classes) per example (torch would fail later, on a GPU obscurely)."""
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iuf" or labels.ndim != 1:
        raise ValueError(f"{file}: {labels.dtype} labels of shape {labels.shape}; expected (N,) class numbers")
    bad = np.flatnonzero((labels < 0) | (labels >= n_classes) | (labels != np.round(labels)))  # NaN too
    if len(bad):
        raise ValueError(f"{file}: label {labels[bad[0]]} of example {bad[0]} is not a class in 0..{n_classes - 1}")
    return labels.astype(np.int64)


# ---------------------------------------------------------------------- the data scripts' command line

EXIT_ERROR = 2  # a data script's exit status when its input or output location is refused


def script_parser(doc: str, writes: str, default_out: str | None = None) -> argparse.ArgumentParser:
    """A data script's command line, described by the first paragraph of its docstring ``doc``,
    with the options every script takes, spelled and meant one way: ``--out`` (``writes``: what
    goes there; required unless ``default_out``), ``--overwrite``, ``--no-progress``; the script
    adds its own (what it reads). ``--out`` is kept as given: ``Path("")`` would silently be the
    working folder, which a script's ``prepare`` may refuse."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common = parser.add_argument_group("options of every data script")
    common.add_argument("--out", required=default_out is None, default=default_out,
                        help=writes + ("" if default_out is None else f" (default: {default_out})"))
    common.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    common.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def script_main(main: Callable[[Sequence[str] | None], int]) -> Callable[[Sequence[str] | None], int]:
    """A data script's ``main(argv)``, ending the way every script does: input it refuses, or an
    output location that cannot take the result (PrepareError; OSError: a disk unwritable or
    full, whose message names it), is the one line ``error: ...`` on stderr and exit status
    ``EXIT_ERROR``; anything else is a bug, and shows its traceback."""
    @functools.wraps(main)
    def run(argv: Sequence[str] | None = None) -> int:
        try:
            return main(argv)
        except (PrepareError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_ERROR
    return run


@contextlib.contextmanager
def as_prepare_error() -> Iterator[None]:
    """An OSError in the block raised as a PrepareError with its message, for a ``prepare``
    whose every refusal is one: an unwritable or full ``--out`` is said like bad input."""
    try:
        yield
    except OSError as e:
        raise PrepareError(str(e)) from None
