"""Small I/O helpers shared by the package and the data scripts: nothing half-written."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


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
