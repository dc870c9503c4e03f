"""Run the notebooks headless with papermill, export each to HTML, gather their numbers.

Each notebook has a cell tagged ``parameters`` with an ``output_dir`` parameter; it writes
the numbers it measured to ``<output_dir>/metrics.json``. Executed copies and their HTML go
to ``<out>/<notebook name>/``. A notebook that needs real data says so in its metadata,
``{"i2m2kit": {"data_parameter": "data_dir", "data_subdir": "mimic3_demo"}}`` (optionally
``"data_requires": [entries the folder must hold]``, ``"download_parameter"`` and
``"data_hint"``, how to obtain the data): the runner
points that parameter at ``<data root>/<data_subdir>`` and skips the notebook, saying why,
when the folder is not there.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

from .io import atomic_path


PLOTLY_MIME = "application/vnd.plotly.v1+json"


def export_html(notebook: str | os.PathLike, html: str | os.PathLike) -> Path:
    """A static HTML page of an executed notebook whose plots draw offline.

    The notebook stores figures as plotly JSON only (small files, live in JupyterLab); here each
    becomes an HTML div, with plotly.js inlined once, before the first figure of the page.
    """
    import nbformat
    import plotly.io as pio
    from nbconvert import HTMLExporter

    nb = nbformat.read(str(notebook), as_version=4)
    first = True
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            figure = output.get("data", {}).get(PLOTLY_MIME)
            if figure is not None:
                output["data"]["text/html"] = pio.to_html(figure, include_plotlyjs=first, full_html=False)
                first = False
    body, _ = HTMLExporter(template_name="lab").from_notebook_node(nb)
    with atomic_path(html) as tmp:
        tmp.write_text(body, encoding="utf-8")
    return Path(html)


def data_requirement(notebook: str | os.PathLike) -> dict[str, str]:
    """What real data a notebook needs: its metadata's ``i2m2kit`` entry (empty: none)."""
    import nbformat

    return dict(nbformat.read(str(notebook), as_version=4).metadata.get("i2m2kit", {}))


def data_parameters(notebook: str | os.PathLike, data_root: str | os.PathLike,
                    parameters: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The data parameter to pass to ``notebook`` and, if its data is missing, why it is skipped.

    The folder must hold every entry of ``data_requires`` (if the metadata lists any), unless
    the notebook is told to fetch them (its ``download_parameter`` set true)."""
    need = data_requirement(notebook)
    name = need.get("data_parameter")
    if not name:
        return {}, None
    location = parameters.get(name) or str(Path(data_root) / need.get("data_subdir", ""))
    folder = find_folder(location)
    missing = [] if folder is None else [p for p in need.get("data_requires", []) if not (folder / p).exists()]
    download = need.get("download_parameter")
    if download and parameters.get(download):
        return ({name: str(folder.resolve()) if folder is not None else location}, None)
    fetch = f", or -p {download} true to fetch it from its publishers" if download else ""
    fetch += f"; {need['data_hint']}" if need.get("data_hint") else ""  # how to obtain the data
    if folder is None:
        return {}, (f"its data is not at {location!r}; pass the location with --data ROOT "
                    f"(or I2M2KIT_DATA) or -p {name} PATH{fetch}")
    if missing:
        return {}, (f"{location!r} lacks {', '.join(missing)}; pass a location holding "
                    f"{', '.join(need['data_requires'])} with --data ROOT (or I2M2KIT_DATA) or -p {name} PATH{fetch}")
    return {name: str(folder.resolve())}, None


def check_parameter(name: str, value: Any, kind: type | tuple[type, ...] | None = None, low: float | None = None,
                    high: float | None = None, choices: Sequence[Any] | None = None,
                    items: type | tuple[type, ...] | None = None) -> None:
    """A notebook's first cells call this for each parameter, so that a bad value fails at
    once with a message naming the parameter, not deep inside training.

    ``kind``: accepted type(s) (an int is accepted where float is asked); ``low``/``high``:
    inclusive bounds; ``choices``: the allowed values; ``items``: a non-empty list or tuple
    whose elements are of this type (or types), ``low``, ``high`` and ``choices`` then holding
    for each element. NaN and infinite numbers are always refused."""
    def fail(why: str) -> None:
        raise ValueError(f"parameter {name}={value!r}: {why}")

    if kind is not None:
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds:
            kinds += (int,)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            fail(f"expected {' or '.join(k.__name__ for k in kinds)}, got {type(value).__name__}")
    if items is not None:
        item_kinds = items if isinstance(items, tuple) else (items,)
        named = " or ".join(k.__name__ for k in item_kinds)
        if not isinstance(value, (list, tuple)) or not value:
            fail(f"expected a non-empty list of {named}")
        if not all(isinstance(v, item_kinds) and not isinstance(v, bool) for v in value):
            fail(f"every element must be {named}")
        for i, v in enumerate(value):  # bounds and choices hold for each element
            check_parameter(f"{name}[{i}]", v, low=low, high=high, choices=choices)
        return
    if isinstance(value, float) and not math.isfinite(value):  # NaN passes every bound; inf is no setting
        fail("must be a finite number")
    if choices is not None and value not in choices:
        fail(f"must be one of {list(choices)}")
    if low is not None and value < low:
        fail(f"must be at least {low}")
    if high is not None and value > high:
        fail(f"must be at most {high}")


def check_device(name: str, value: Any) -> None:
    """A device parameter: a name, and one this machine has (``"auto"``, ``"cpu"``, ``"cuda"``, ...)."""
    from .train import resolve_device

    check_parameter(name, value, kind=str)
    try:
        resolve_device(value)
    except ValueError as e:
        raise ValueError(f"parameter {name}={value!r}: {e}") from None


def check_known_parameters(notebook: str | os.PathLike, parameters: Mapping[str, Any]) -> None:
    """Refuse parameters the notebook's ``parameters`` cell does not declare (papermill would
    inject them silently and the run would ignore them)."""
    import papermill

    declared = papermill.inspect_notebook(str(notebook))
    unknown = sorted(set(parameters) - set(declared))
    if unknown:
        raise ValueError(f"{Path(notebook).name}: unknown parameter{'s' * (len(unknown) > 1)} "
                         f"{', '.join(unknown)}; it takes {', '.join(declared)}")


def ipc_kernel_manager(folder: str | os.PathLike):
    """A kernel manager whose kernel talks over IPC sockets in ``folder`` (a private temporary
    folder), not over TCP on localhost: nothing travels over the network, and ipykernel has no
    reason to print, at every notebook, that TCP traffic is unencrypted. TCP where IPC is
    missing (Windows)."""
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    class IPCKernelManager(AsyncKernelManager):
        @default("transport")
        def _default_transport(self) -> str:
            return "tcp" if os.name == "nt" else "ipc"

        @default("ip")
        def _default_ip(self) -> str:
            return "127.0.0.1" if os.name == "nt" else str(Path(folder) / "kernel")

    return IPCKernelManager


def run_notebook(notebook: str | os.PathLike, out: str | os.PathLike = "outputs",
                 parameters: Mapping[str, Any] | None = None, kernel_name: str = "python3",
                 progress: bool = True) -> dict[str, Any]:
    """Execute ``notebook`` with ``parameters``; return where its copy, HTML and numbers are."""
    import papermill

    notebook = Path(notebook)
    if not notebook.is_file():
        raise FileNotFoundError(f"notebook {notebook} does not exist")
    check_known_parameters(notebook, parameters or {})
    run_dir = Path(out) / notebook.stem
    run_dir.mkdir(parents=True, exist_ok=True)
    executed, html, metrics = run_dir / notebook.name, run_dir / f"{notebook.stem}.html", run_dir / "metrics.json"
    metrics.unlink(missing_ok=True)  # numbers from an earlier run must not pass for this one's
    with tempfile.TemporaryDirectory(prefix="i2m2kit-kernel-") as sockets:
        papermill.execute_notebook(
            str(notebook), str(executed), parameters={"output_dir": str(run_dir), **(parameters or {})},
            kernel_name=kernel_name, progress_bar=progress, store_widget_state=False,
            kernel_manager_class=ipc_kernel_manager(sockets),
        )
    export_html(executed, html)
    return {"notebook": str(executed), "html": str(html),
            "metrics": json.loads(metrics.read_text()) if metrics.exists() else {}}


def repository_root() -> Path:
    """The folder holding ``i2m2kit/``, ``notebooks/`` and ``data_scripts/`` (an editable install)."""
    return Path(__file__).resolve().parents[1]


def find_folder(path: str | os.PathLike) -> Path | None:
    """``path`` as given if it is a folder, else relative to the repository root, else None.

    Notebooks run with the working directory of whoever started them; their data locations
    (such as ``../shared/data``) are written relative to the repository root.
    """
    for candidate in (Path(path), repository_root() / path):
        if candidate.is_dir():
            return candidate
    return None


def prepare_data(benchmark: str, raw: str | os.PathLike, out: str | os.PathLike,
                 args: tuple[str, ...] = (), scripts: str | os.PathLike | None = None) -> Path:
    """Run ``data_scripts/prepare_<benchmark>.py --raw RAW --out OUT`` unless OUT already holds
    its result; return OUT. A failure raises with the script's own one-line error."""
    import subprocess
    import sys

    out = Path(out)
    if (out / "metadata.json").exists():
        print(f"reusing the prepared data in {out}")
        return out
    script = Path(scripts or repository_root() / "data_scripts") / f"prepare_{benchmark}.py"
    done = subprocess.run([sys.executable, str(script), "--raw", str(raw), "--out", str(out), *args],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{script.name} failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")
    print(done.stdout.strip())
    return out
