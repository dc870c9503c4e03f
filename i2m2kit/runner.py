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

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path
from dataclasses import dataclass
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
    from .inference import resolve_device

    check_parameter(name, value, kind=str)
    try:
        resolve_device(value)
    except ValueError as e:
        raise ValueError(f"parameter {name}={value!r}: {e}") from None


Bound = Any  # a number, a choice list, or a function of the notebook's parameters giving one


@dataclass(frozen=True)
class Param:
    """A notebook parameter's declaration, written as its annotation in the ``parameters`` cell,
    beside its value (papermill's injected values replace the values, not the annotations)::

        epochs: Param(int, low=1) = 3             # epochs of each stage
        regime: Param(choices=("joint", "pretrain_finetune")) = "joint"
        valid_size: Param(int, low=1, high=lambda p: p["n_train"] - 1) = 500
        device: Param(device=True) = "auto"

    ``check_parameters(globals())`` then checks every declared parameter in one call (see
    ``check_parameter`` for ``kind``, ``low``, ``high``, ``choices``, ``items``); a bound
    may be a function of the parameters, for one that depends on another. ``None``, where
    ``kind`` admits it, is "not set": the bounds and choices are for the values that are."""

    kind: type | tuple[type, ...] | None = None
    low: Bound = None
    high: Bound = None
    choices: Bound = None
    items: type | tuple[type, ...] | None = None
    device: bool = False

    def check(self, name: str, value: Any, parameters: Mapping[str, Any]) -> None:
        if self.device:
            return check_device(name, value)
        if value is None and type(None) in (self.kind if isinstance(self.kind, tuple) else (self.kind,)):
            return
        given = {k: v(parameters) if callable(v) and not isinstance(v, type) else v
                 for k, v in (("low", self.low), ("high", self.high), ("choices", self.choices))}
        check_parameter(name, value, kind=self.kind, items=self.items, **given)


def check_parameters(namespace: Mapping[str, Any]) -> None:
    """Check every parameter a notebook declares with ``Param`` (pass ``globals()``): a bad
    value fails at once with a message naming the parameter, not deep inside training."""
    for name, declared in namespace.get("__annotations__", {}).items():
        if isinstance(declared, Param):
            declared.check(name, namespace[name], namespace)


def declared_parameters(notebook: str | os.PathLike) -> list[str]:
    """The names the notebook's ``parameters`` cell assigns, in order (plain or annotated)."""
    import ast

    import nbformat

    nb = nbformat.read(str(notebook), as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]
    names = []
    for cell in cells[:1]:
        for node in ast.parse(cell.source).body:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
            names += [t.id for t in targets if isinstance(t, ast.Name)]
    return names


def write_metrics(metrics: Mapping[str, Any], output_dir: str | os.PathLike) -> Path:
    """A notebook's numbers, to ``<output_dir>/metrics.json`` (atomically), said where."""
    from .io import write_json_atomic

    path = Path(output_dir) / "metrics.json"
    write_json_atomic(dict(metrics), path)
    print(f"numbers written to {path}")
    return path


def _annotated_parameters_filter(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not (message.startswith("Passed unknown parameter") or message.startswith("Unable to parse line"))


def check_known_parameters(notebook: str | os.PathLike, parameters: Mapping[str, Any]) -> None:
    """Refuse parameters the notebook's ``parameters`` cell does not declare (papermill would
    inject them silently and the run would ignore them)."""
    declared = declared_parameters(notebook)
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
    """Execute ``notebook`` with ``parameters``; return where its copy, HTML and numbers are.

    Atomic: the executed copy and its HTML are written beside the old ones and replace them,
    with the new ``metrics.json``, only when every cell ran. On failure the earlier results
    stay as they were, the failed copy is kept as ``<name>.failed.ipynb`` to read the error in,
    and the error is raised. A run killed midway leaves its staging folder and the earlier
    numbers aside; the next run of the notebook puts them back (``recover_results``).
    """
    import papermill

    notebook = Path(notebook)
    if not notebook.is_file():
        raise FileNotFoundError(f"notebook {notebook} does not exist")
    check_known_parameters(notebook, parameters or {})
    parameters = {"output_dir": str(Path(out) / notebook.stem), **(parameters or {})}
    run_dir = Path(out) / notebook.stem
    run_dir.mkdir(parents=True, exist_ok=True)
    recover_results(run_dir)
    executed, html, failed = run_dir / notebook.name, run_dir / f"{notebook.stem}.html", run_dir / f"{notebook.stem}.failed.ipynb"
    metrics = Path(parameters["output_dir"]) / "metrics.json"
    earlier = run_dir / f".metrics.earlier-{os.getpid()}.json"
    if metrics.exists():  # the notebook writes metrics.json itself: keep the earlier one aside until it succeeds
        os.replace(metrics, earlier)
    stage = Path(tempfile.mkdtemp(dir=run_dir, prefix=f".stage-{os.getpid()}-"))
    try:
        remove_kernel_leftovers()
        with tempfile.TemporaryDirectory(prefix=f"i2m2kit-kernel-{os.getpid()}-") as sockets:
            for name in ("papermill", "papermill.translators"):  # it cannot read Param annotations; the
                logging.getLogger(name).addFilter(_annotated_parameters_filter)  # runner checked the names
            papermill.execute_notebook(
                str(notebook), str(stage / notebook.name), parameters=parameters,
                kernel_name=kernel_name, progress_bar=progress, store_widget_state=False,
                kernel_manager_class=ipc_kernel_manager(sockets),
            )
        export_html(stage / notebook.name, stage / html.name)
    except BaseException:  # Ctrl-C too: the earlier results come back
        if (stage / notebook.name).exists():
            os.replace(stage / notebook.name, failed)
        metrics.unlink(missing_ok=True)
        if earlier.exists():
            os.replace(earlier, metrics)
        shutil.rmtree(stage, ignore_errors=True)
        raise
    os.replace(stage / notebook.name, executed)
    os.replace(stage / html.name, html)
    earlier.unlink(missing_ok=True)
    failed.unlink(missing_ok=True)
    shutil.rmtree(stage, ignore_errors=True)
    return {"notebook": str(executed), "html": str(html),
            "metrics": json.loads(metrics.read_text()) if metrics.exists() else {}}


def remove_kernel_leftovers() -> None:
    """The kernel socket folders of runs that were killed (nothing removed them)."""
    from .io import left_by_dead_process

    for folder in Path(tempfile.gettempdir()).glob("i2m2kit-kernel-*-*"):
        if left_by_dead_process(folder.name, "i2m2kit-kernel-"):
            shutil.rmtree(folder, ignore_errors=True)


def recover_results(run_dir: str | os.PathLike) -> list[str]:
    """Undo what a killed run of a notebook left in its folder: its staging folders are
    removed, and the earlier ``metrics.json`` it had set aside is put back (the run never
    finished, so its own numbers, if any, are not trusted). Returns what was done, said."""
    from .io import left_by_dead_process

    said = []
    for leftover in sorted(Path(run_dir).glob(".stage-*")) + sorted(Path(run_dir).glob(".metrics.earlier-*.json")):
        if not left_by_dead_process(leftover.name, leftover.name.split("-")[0] + "-"):
            continue  # a run still going (the lock keeps two runs apart; this is a direct caller)
        if leftover.name.startswith(".stage-"):
            shutil.rmtree(leftover, ignore_errors=True)
            said.append(f"removed {leftover.name}, left by a run that was killed")
        else:
            os.replace(leftover, Path(run_dir) / "metrics.json")
            said.append("restored the metrics.json a killed run had set aside")
    for line in said:
        print(f"{run_dir}: {line}")
    return said


def output_lock(out: str | os.PathLike):
    """Hold ``<out>/.i2m2kit-run.lock`` for a run: a second run into the same folder is refused
    at once (the operating system releases the lock when a run dies, however it dies)."""
    from .io import exclusive_lock

    return exclusive_lock(out, ".i2m2kit-run.lock", "another i2m2kit run", "pass another --out")


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


def prepare_data(benchmark: str, raw: str | os.PathLike | None, out: str | os.PathLike,
                 args: tuple[str, ...] = (), scripts: str | os.PathLike | None = None,
                 reads: tuple[str, ...] = ("**/*",)) -> Path:
    """Run ``data_scripts/prepare_<benchmark>.py --raw RAW --out OUT ARGS`` unless OUT already
    holds its result; return OUT. A failure raises with the script's own one-line error.

    A folder built here records a fingerprint of what made it in its ``metadata.json``: the raw
    files' identity (names, sizes and times of the files under ``reads`` in RAW), the script's
    arguments and content, the package version. It is reused only when the fingerprint of this
    call matches; otherwise this refuses, saying what differs (stale data must never pass for
    new). A prepared folder built elsewhere (by hand, or a published release) has no
    fingerprint and is used as given, which is said. ``raw`` None or missing: the raw files
    cannot be checked, so only the settings are (and that is said)."""
    import subprocess
    import sys

    from .io import fingerprint, fingerprint_differences, write_json_atomic

    out = Path(out)
    script = Path(scripts or repository_root() / "data_scripts") / f"prepare_{benchmark}.py"
    settings = {"script": script.name, "arguments": [str(a) for a in args],
                "script_sha256": hashlib.sha256(script.read_bytes()).hexdigest() if script.is_file() else None}
    have_raw = raw is not None and Path(raw).exists()
    if (out / "metadata.json").exists():
        try:
            meta = json.loads((out / "metadata.json").read_text())
            stored = meta.get("fingerprint")
        except (ValueError, OSError, AttributeError) as e:  # empty, truncated, not an object
            raise ValueError(f"{out / 'metadata.json'}: not a readable metadata file ({e}); delete {out} "
                             f"to rebuild it") from None
        if stored is None:
            print(f"using the prepared data in {out} as given (built outside this runner: its origin is not checked)")
            return out
        wanted = fingerprint(raw if have_raw else None, settings, reads)
        if not have_raw:  # nothing to compare the raw files with
            stored = {k: v for k, v in stored.items() if not k.startswith("raw")}
            wanted = {k: v for k, v in wanted.items() if not k.startswith("raw")}
        differences = fingerprint_differences(stored, wanted)
        if differences:
            raise ValueError(f"{out}: prepared from other input or settings ({'; '.join(differences)}); "
                             f"delete the folder to rebuild it, or name another prepared folder")
        print(f"reusing the prepared data in {out} (made from the same "
              f"{'raw files and ' if have_raw else ''}settings{'' if have_raw else '; the raw files are not here to check'})")
        return out
    if raw is None:
        raise FileNotFoundError(f"{out}: no prepared data there, and no raw files given to build it from")
    done = subprocess.run([sys.executable, str(script), "--raw", str(raw), "--out", str(out), *args],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{script.name} failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")
    meta = json.loads((out / "metadata.json").read_text())
    meta["fingerprint"] = fingerprint(raw, settings, reads)  # after the build: a --download adds raw files
    write_json_atomic(meta, out / "metadata.json")
    print(done.stdout.strip())
    for line in done.stderr.splitlines():  # what the script says it imputed or left out, shown where it is used
        if line.startswith("warning:"):
            print(line)
    return out
