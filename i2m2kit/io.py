"""Small I/O helpers shared by the package and the data scripts: nothing half-written."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import importlib.util
import json
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-")) / path.name
    try:
        yield tmp
        if path.is_dir() and tmp.is_dir():
            old = tmp.parent / f"{path.name}.old"
            os.replace(path, old)  # two renames: the new folder appears whole
            os.replace(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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
