"""The main job's front page: ``<out>/index.html``, linking each executed notebook's HTML
export and tabulating the numbers every notebook that ran measured (its ``metrics.json``).

The page is plain HTML and CSS with relative links, so the output folder can be opened, moved
or archived without a server or a network; the plots live in the notebooks' own pages, which
inline plotly.js (``runner.export_html``).
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any, Iterator, Mapping
from urllib.parse import quote

from .io import atomic_path

# A list of result rows longer than this (a regime grid) is counted, not spelled out: the
# notebook's own page draws it.
MAX_ROWS = 6


def measured_numbers(metrics: Any, name: str = "") -> Iterator[tuple[str, str]]:
    """``(measure, value)`` for every number in a notebook's metrics, nested names joined by
    `` / ``; a short list of rows is named by each row's first text field."""
    if isinstance(metrics, Mapping):
        for key, value in metrics.items():
            yield from measured_numbers(value, f"{name} / {key}" if name else str(key))
    elif isinstance(metrics, (list, tuple)) and metrics and all(isinstance(r, Mapping) for r in metrics):
        if len(metrics) > MAX_ROWS:
            yield name, f"{len(metrics)} rows (see the notebook's page)"
            return
        for i, row in enumerate(metrics):
            label = next((v for v in row.values() if isinstance(v, str)), str(i))
            yield from measured_numbers({k: v for k, v in row.items() if v is not label}, f"{name} / {label}")
    elif isinstance(metrics, (list, tuple)):
        yield name, ", ".join(_format(v) for v in metrics)
    else:
        yield name, _format(metrics)


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _link(target: str | os.PathLike, out: Path, text: str) -> str:
    relative = Path(os.path.relpath(Path(target).resolve(), out.resolve())).as_posix()
    return f'<a href="{quote(relative)}">{html.escape(text)}</a>'


def write_index(summary: Mapping[str, Mapping[str, Any]], out: str | os.PathLike) -> Path:
    """Write ``<out>/index.html`` from the main job's summary (notebook name -> what ``--out``
    holds of it: ``run_notebook``'s result, with ``"skipped"`` or ``"failed"`` (why) and
    ``"from_earlier_run"`` where this run did not make it) and return its path."""
    out = Path(out)
    overview, numbers = [], []
    for notebook, result in summary.items():
        name = html.escape(notebook)
        notes = []  # what this run did not do, in red: a failure, a skip, results of an earlier run
        if "failed" in result:
            failed = result.get("failed_notebook")
            notes.append(f"failed: {html.escape(str(result['failed']))}"
                         + (f" ({_link(failed, out, 'its cells as run')})" if failed else ""))
        if "skipped" in result:
            notes.append(f"skipped: {html.escape(str(result['skipped']))}")
        if result.get("from_earlier_run") and "html" in result:
            notes.append("the report below is from an earlier run")
        note = f"<div class=skipped>{'; '.join(notes)}</div>" if notes else ""
        if "html" not in result:
            overview.append(f"<tr><td>{name}</td><td colspan=2>{note}</td></tr>")
            continue
        overview.append(f"<tr><td>{name}</td><td>{_link(result['html'], out, 'report (HTML)')}{note}</td>"
                        f"<td>{_link(result['notebook'], out, 'executed notebook')}</td></tr>")
        rows = list(measured_numbers(result.get("metrics", {})))
        for i, (measure, value) in enumerate(rows):
            first = f"<td rowspan={len(rows)}>{name}</td>" if i == 0 else ""
            numbers.append(f"<tr>{first}<td>{html.escape(measure)}</td><td class=value>{html.escape(value)}</td></tr>")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>i2m2kit: notebook reports</title>
<style>
body {{ font-family: sans-serif; margin: 2em auto; max-width: 60em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 2em; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: left; vertical-align: baseline; }}
th {{ background: #f0f0f0; }}
td.value {{ font-family: monospace; text-align: right; }}
.skipped {{ color: #a33; }}
</style></head>
<body>
<h1>i2m2kit: notebook reports</h1>
<p>Each notebook as executed by <code>i2m2kit run</code>; the reports draw their plots offline.</p>
<table id="notebooks"><tr><th>notebook</th><th>report</th><th>notebook file</th></tr>
{chr(10).join(overview)}
</table>
<h2>Measured numbers</h2>
<table id="numbers"><tr><th>notebook</th><th>measure</th><th>value</th></tr>
{chr(10).join(numbers)}
</table>
</body></html>
"""
    index = out / "index.html"
    with atomic_path(index) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return index
