"""Plotly figures: pure functions from results to ``go.Figure``, shared by every notebook.

In notebooks, ``use_notebook_renderer()`` stores each figure as plotly JSON: drawn live by
JupyterLab, small on disk, and turned into offline HTML (plotly.js inlined once per page) by
``runner.export_html``.
"""

from __future__ import annotations

import base64
import io
from typing import Mapping, Sequence

import plotly.graph_objects as go
import plotly.io as pio
import torch
from PIL import Image
from plotly.subplots import make_subplots

from . import contributions as C

MODEL_ORDER = ("uni:x", "uni:x2", "intra", "inter", "i2m2")
EXPERT_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd")


def use_notebook_renderer() -> None:
    """Store figures as plotly JSON in notebook outputs (see the module docstring)."""
    pio.renderers.default = "plotly_mimetype"


def graphical_model() -> go.Figure:
    """The generative story: y -> x, y -> x', and the selection v on (x, x', y), observed as 1."""
    nodes = {"y": (0.5, 0.9), "x": (0.15, 0.45), "x'": (0.85, 0.45), "v = 1": (0.5, 0.1)}
    edges = [("y", "x"), ("y", "x'"), ("x", "v = 1"), ("x'", "v = 1"), ("y", "v = 1")]
    fig = go.Figure()
    for a, b in edges:
        (x0, y0), (x1, y1) = nodes[a], nodes[b]
        fig.add_annotation(x=x0 + 0.82 * (x1 - x0), y=y0 + 0.82 * (y1 - y0), ax=x0, ay=y0,
                           xref="x", yref="y", axref="x", ayref="y", showarrow=True,
                           arrowhead=3, arrowsize=1.5, arrowwidth=2, arrowcolor="#555")
    fig.add_trace(go.Scatter(
        x=[p[0] for p in nodes.values()], y=[p[1] for p in nodes.values()], mode="markers+text",
        text=list(nodes), textfont=dict(size=18), hoverinfo="skip", showlegend=False, cliponaxis=False,
        marker=dict(size=58, color=["#fff", "#fff", "#fff", "#ddd"], line=dict(width=2, color="#333"))))
    fig.update_layout(title="I2M2's generative model: intra (y → x, y → x') and inter (selection v)",
                      xaxis=dict(visible=False, range=[0, 1]), yaxis=dict(visible=False, range=[0, 1]),
                      height=360, width=620, plot_bgcolor="white")
    return fig


def model_accuracy(rows: Sequence[Mapping], bayes: float | None = None, metric: str = "accuracy",
                   title: str = "Test accuracy by model") -> go.Figure:
    """Bars of ``metric`` per model (mean with std error bars when ``<metric>_std`` is given),
    with the Bayes limit as a line when known."""
    fig = go.Figure(go.Bar(
        x=[r["model"] for r in rows], y=[r[metric] for r in rows],
        error_y=dict(type="data", array=[r.get(f"{metric}_std", 0) for r in rows]),
        text=[f"{r[metric]:.3f}" for r in rows], textposition="outside", marker_color="#4c78a8"))
    if bayes is not None:
        fig.add_hline(y=bayes, line_dash="dash", line_color="black",
                      annotation_text=f"Bayes limit {bayes:.3f}", annotation_position="top left")
    low = min(r[metric] for r in rows)
    fig.update_layout(title=title, yaxis_title=metric, yaxis_range=[max(0, low - 0.1), 1.02], height=380)
    return fig


def regime_map(rows: Sequence[Mapping], x: str = "inter", y: str = "intra", value: str = "of_bayes",
               models: Sequence[str] | None = None, title: str | None = None) -> go.Figure:
    """One heatmap per model (``label``) over two grid parameters, ``value`` in each cell, e.g.
    accuracy as a fraction of the Bayes accuracy. Rows as ``regimes.regime_map`` returns them."""
    models = list(models or dict.fromkeys(r["label"] for r in rows))
    xs, ys = sorted({r[x] for r in rows}), sorted({r[y] for r in rows})
    lookup = {(r["label"], r[y], r[x]): r[value] for r in rows}
    cols = min(4, len(models))
    n_rows = -(-len(models) // cols)
    fig = make_subplots(rows=n_rows, cols=cols, subplot_titles=models, horizontal_spacing=0.05,
                        vertical_spacing=0.18)
    for i, model in enumerate(models):
        z = [[lookup.get((model, b, a)) for a in xs] for b in ys]
        fig.add_trace(go.Heatmap(
            z=z, x=[str(a) for a in xs], y=[str(b) for b in ys], zmin=0.5, zmax=1.0,
            colorscale="Viridis", showscale=i == 0, colorbar=dict(title=value),
            text=[[("" if v is None else f"{v:.2f}") for v in row] for row in z], texttemplate="%{text}",
            hovertemplate=f"{model}<br>{y} %{{y}}<br>{x} %{{x}}<br>{value} %{{z:.3f}}<extra></extra>"),
            row=i // cols + 1, col=i % cols + 1)
        fig.update_xaxes(title_text=x, type="category", row=i // cols + 1, col=i % cols + 1)
        fig.update_yaxes(title_text=y if i % cols == 0 else None, type="category", row=i // cols + 1, col=i % cols + 1)
    fig.update_layout(title=title or f"{value} by model", height=300 * n_rows + 60, width=260 * cols + 120)
    return fig


def contribution_scatter(expert_logits: Mapping[str, torch.Tensor], targets: torch.Tensor | None = None,
                         x_expert: str | Sequence[str] | None = None, y_expert: str | None = None,
                         max_points: int = 3000, title: str | None = None, target: int | None = None,
                         highlight: tuple[str, torch.Tensor] | None = None) -> go.Figure:
    """Samples placed by two experts' shares of the margin, coloured by the expert that decides.

    By default x is the summed share of the intra-modality experts (all but the last) and y
    the share of the last (joint) expert: points above the diagonal are decided by
    inter-modality evidence, points with opposite signs are where one overruled the other.
    The margin is the predicted class's over the runner-up, or with ``target`` that class's
    over the best other. ``highlight`` = (label, (N,) bool) rings the samples it marks, e.g.
    the predictions that flip when an expert is dropped. Each point's ``customdata`` is its
    sample index, for live explorers to look the sample up.
    """
    names = list(expert_logits)
    shares = C.margin_contributions(expert_logits, target)
    x_names = [x_expert] if isinstance(x_expert, str) else list(x_expert or names[:-1]) or names
    y_name = y_expert or names[-1]
    xs = sum(shares[n] for n in x_names)
    ys = shares[y_name]
    decides = C.deciding_expert(expert_logits, target)
    pred = sum(expert_logits.values()).argmax(1)
    keep = torch.arange(len(xs))[:max_points]
    fig = go.Figure()
    for colour, name in zip(EXPERT_COLOURS, names):
        idx = [int(i) for i in keep if decides[i] == name]
        if not idx:
            continue
        hover = [f"sample {i}<br>predicted {int(pred[i])}"
                 + ("" if targets is None else f", true {int(targets[i])}") for i in idx]
        fig.add_trace(go.Scatter(x=xs[idx].tolist(), y=ys[idx].tolist(), mode="markers",
                                   name=f"decided by {name}", marker=dict(size=5, opacity=0.6, color=colour),
                                   text=hover, hovertemplate="%{text}<extra></extra>", customdata=idx))
    if highlight is not None:
        label, marked = highlight
        idx = [int(i) for i in keep if marked[i]]
        fig.add_trace(go.Scatter(x=xs[idx].tolist(), y=ys[idx].tolist(), mode="markers", name=label,
                                   marker=dict(size=11, color="rgba(0,0,0,0)", line=dict(width=1.5, color="black")),
                                   hovertemplate=f"sample %{{customdata}}: {label}<extra></extra>", customdata=idx))
    margin = "margin" if target is None else f"margin of class {target}"
    fig.add_hline(y=0, line_color="#999")
    fig.add_vline(x=0, line_color="#999")
    fig.update_layout(title=title or f"Each sample's {margin}, split between experts",
                      xaxis_title=f"{margin} share of {' + '.join(x_names)}",
                      yaxis_title=f"{margin} share of {y_name}", height=450)
    return fig


def shapley_by_class(expert_logits: Mapping[str, torch.Tensor], targets: torch.Tensor,
                     class_names: Sequence[str] | None = None) -> go.Figure:
    """Mean exact Shapley value of each expert for the true class, per class."""
    phi = C.shapley_values(expert_logits, targets)
    rows = [{"expert": n, "class": class_names[c] if class_names else str(c), "shapley": phi[n][targets == c].mean().item()}
            for n in phi for c in sorted(set(targets.tolist()))]
    return grouped_bars(rows, "class", "expert", "shapley", title="Mean Shapley value for the true class, by class",
                        x_title="true class", y_title="Shapley value (nats)")


def grouped_bars(rows: Sequence[Mapping], x: str, group: str, value: str, title: str | None = None,
                 x_title: str | None = None, y_title: str | None = None) -> go.Figure:
    """Bars of ``value`` per ``x``, side by side for each ``group`` (e.g. the VQA score per
    question type, one bar per model); rows in the order the bars should appear."""
    xs = list(dict.fromkeys(r[x] for r in rows))
    fig = go.Figure()
    for i, name in enumerate(dict.fromkeys(r[group] for r in rows)):
        got = {r[x]: r[value] for r in rows if r[group] == name}
        fig.add_trace(go.Bar(name=str(name), x=xs, y=[got.get(v) for v in xs],
                             marker_color=EXPERT_COLOURS[i % len(EXPERT_COLOURS)]))
    fig.update_layout(barmode="group", title=title or f"{value} by {x}", xaxis_title=x_title or x,
                      yaxis_title=y_title or value, height=400)
    return fig


def learned_vs_true(expert_logits: Mapping[str, torch.Tensor], terms: Mapping[str, torch.Tensor],
                    pairs: Mapping[str, str], max_points: int = 2000) -> go.Figure:
    """Each learned expert against the exact term it should capture (class 1 minus class 0)."""
    r = C.term_correlation(expert_logits, terms, pairs)
    fig = make_subplots(rows=1, cols=len(pairs), subplot_titles=[
        f"{e} vs {t} (r = {r[e]:.2f})" for e, t in pairs.items()])
    for i, (e, t) in enumerate(pairs.items(), start=1):
        learned = (expert_logits[e][:, 1] - expert_logits[e][:, 0])[:max_points]
        true = (terms[t][:, 1] - terms[t][:, 0])[:max_points].cpu()
        fig.add_trace(go.Scatter(x=true.tolist(), y=learned.tolist(), mode="markers", showlegend=False,
                                   marker=dict(size=4, opacity=0.5, color=EXPERT_COLOURS[i - 1])), row=1, col=i)
        fig.update_xaxes(title_text="exact term", row=1, col=i)
    fig.update_yaxes(title_text="learned logit difference", row=1, col=1)
    fig.update_layout(title="Did each expert learn its term of the posterior?", height=380)
    return fig


def expert_summary(rows: Sequence[Mapping]) -> go.Figure:
    """Per expert: accuracy alone, how often it decides, how often dropping it flips the call."""
    metrics = [("accuracy_alone", "accuracy alone"), ("decides", "decides"),
               ("flip_rate_if_dropped", "flips if dropped")]
    fig = go.Figure([go.Bar(name=label, x=[r["expert"] for r in rows], y=[r[k] for r in rows])
                     for k, label in metrics])
    fig.update_layout(barmode="group", title="What each expert does", yaxis_range=[0, 1], height=360)
    return fig


def evidence_scatter(terms: Mapping[str, torch.Tensor], y: torch.Tensor, max_points: int = 3000,
                     title: str = "Where the evidence for the true class lives") -> go.Figure:
    """Each sample by its exact intra-modality evidence (x and x' terms) and its inter-modality
    evidence (the selection term) for the true class over the best other class."""
    def evidence(t: torch.Tensor) -> torch.Tensor:
        t = t.cpu()
        rows = torch.arange(len(y))
        true = t[rows, y]
        other = t.clone()
        other[rows, y] = -float("inf")
        return true - other.max(1).values

    y = y.cpu()
    intra = evidence(terms["x"] + terms["x2"])[:max_points]
    inter = evidence(terms["selection"])[:max_points]
    yy = y[:max_points]
    fig = go.Figure([go.Scatter(x=intra[yy == c].tolist(), y=inter[yy == c].tolist(), mode="markers",
                                  name=f"class {c}", marker=dict(size=4, opacity=0.5, color=col))
                     for c, col in zip(sorted(set(yy.tolist())), EXPERT_COLOURS)])
    fig.add_hline(y=0, line_color="#999")
    fig.add_vline(x=0, line_color="#999")
    fig.update_layout(title=title, height=420, xaxis_title="intra-modality evidence (nats)",
                      yaxis_title="inter-modality evidence (nats)")
    return fig


def metric_curves(rows: Sequence[Mapping], x: str, group: str, metric: str = "accuracy",
                  title: str | None = None, x_title: str | None = None) -> go.Figure:
    """``metric`` against ``x``, one line per value of ``group`` (with error bars
    when ``<metric>_std`` is given), e.g. accuracy against test-time noise per model."""
    fig = go.Figure()
    for i, name in enumerate(dict.fromkeys(r[group] for r in rows)):
        line = sorted((r for r in rows if r[group] == name), key=lambda r: r[x])
        fig.add_trace(go.Scatter(
            x=[r[x] for r in line], y=[r[metric] for r in line], mode="lines+markers", name=str(name),
            line=dict(color=EXPERT_COLOURS[i % len(EXPERT_COLOURS)]),
            error_y=dict(type="data", array=[r.get(f"{metric}_std", 0) for r in line])))
    fig.update_layout(title=title or f"{metric} against {x}", xaxis_title=x_title or x, yaxis_title=metric,
                      height=400)
    return fig


def _png(picture: torch.Tensor, flip: bool) -> str:
    """A picture as an inline PNG, a few kB however many pixels: a 2-D tensor in grey levels
    (its min to its max), a ``(3, H, W)`` tensor in colour (0-1 floats or 0-255 integers)."""
    x = picture.detach().float().cpu()
    if x.ndim == 3:  # colour, channels first
        x = x.permute(1, 2, 0) * (255 if x.max() <= 1 else 1)
    else:
        x = (x - x.min()) / (x.max() - x.min()).clamp_min(1e-12) * 255
    pixels = x.round().clamp(0, 255).to(torch.uint8).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels[::-1] if flip else pixels, mode="RGB" if pixels.ndim == 3 else "L").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def examples(panels: Mapping[str, torch.Tensor], captions: Sequence[str], title: str = "Examples",
             flip_vertical: Sequence[str] = ()) -> go.Figure:
    """A grid of pictures: one column per sample (its caption above), one row per panel, e.g.
    ``{"image": (N, 28, 28), "spectrogram": (N, 112, 112)}`` in grey levels, or
    ``(N, 3, H, W)`` in colour (a single channel dimension is dropped). Panels named in
    ``flip_vertical`` are drawn with row 0 at the bottom (low frequencies of a spectrogram).
    Pictures are stored as PNG, so the figure stays small in a notebook."""
    names, n = list(panels), len(captions)
    fig = make_subplots(rows=len(names), cols=n, column_titles=list(captions), row_titles=names,
                        horizontal_spacing=0.01, vertical_spacing=0.04)
    for r, name in enumerate(names, start=1):
        for c in range(1, n + 1):
            picture = panels[name][c - 1]
            picture = picture if picture.ndim == 3 and len(picture) == 3 else picture.reshape(picture.shape[-2:])
            fig.add_trace(go.Image(source=_png(picture, name in flip_vertical), hoverinfo="skip"), row=r, col=c)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_annotations(font_size=11)
    fig.update_layout(title=title, height=190 * len(names) + 120, width=max(600, 150 * n + 80),
                      margin=dict(l=30, r=30, t=110, b=20))
    return fig


def sample_view(sample: Mapping[str, torch.Tensor | str], title: str = "The sample",
                flip_vertical: Sequence[str] = ()) -> go.Figure:
    """One sample, a panel per modality: a vector as bars of its coordinates (the simulator's x
    and x', a record's features), a 2-D tensor as a grey-scale picture (an image, a
    spectrogram: name it in ``flip_vertical`` to put row 0 at the bottom), a string as text."""
    names = list(sample)
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names, horizontal_spacing=0.08)
    for c, name in enumerate(names, start=1):
        value = sample[name]
        if isinstance(value, str):
            fig.add_trace(go.Scatter(x=[0.5], y=[0.5], mode="text", text=[value], hoverinfo="skip",
                                       showlegend=False), row=1, col=c)
            fig.update_xaxes(visible=False, range=[0, 1], row=1, col=c)
            fig.update_yaxes(visible=False, range=[0, 1], row=1, col=c)
            continue
        value = value.detach().float().cpu().squeeze()
        if value.ndim <= 1:
            fig.add_trace(go.Bar(x=list(range(value.numel())), y=value.flatten().tolist(), showlegend=False,
                                 marker_color=EXPERT_COLOURS[(c - 1) % len(EXPERT_COLOURS)]), row=1, col=c)
            fig.update_xaxes(title_text="coordinate", row=1, col=c)
        elif value.ndim == 2:
            fig.add_trace(go.Image(source=_png(value, name in flip_vertical), hoverinfo="skip"), row=1, col=c)
            fig.update_xaxes(visible=False, row=1, col=c)
            fig.update_yaxes(visible=False, row=1, col=c)
        else:
            raise ValueError(f"modality {name!r} has shape {tuple(value.shape)}: pass a vector, a 2-D picture "
                             f"or a string per modality (reshape it in the display function)")
    fig.update_layout(title=title, height=300, margin=dict(t=80))
    return fig


def sample_experts(expert_logits: Mapping[str, torch.Tensor], shapley: Mapping[str, float], target: int,
                   class_names: Sequence[str] | None = None, terms: Mapping[str, torch.Tensor] | None = None,
                   title: str | None = None) -> go.Figure:
    """One sample as the experts see it: each expert's logits per class (``{name: (K,)}``), each
    expert's exact Shapley value for class ``target``, and, where the exact posterior is known
    (the simulator), its three terms centred over the classes (logits are only defined up to
    a shift per expert, so compare shapes, not levels)."""
    k = len(next(iter(expert_logits.values())))
    labels = list(class_names or [str(c) for c in range(k)])
    panels = ["expert logits", f"Shapley values, class {labels[target]}"] + (["exact terms (centred)"] if terms else [])
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=panels, horizontal_spacing=0.1)
    for colour, (name, z) in zip(EXPERT_COLOURS, expert_logits.items()):
        fig.add_trace(go.Bar(name=name, x=labels, y=z.detach().float().cpu().tolist(), marker_color=colour,
                             legendgroup=name), row=1, col=1)
    fig.add_trace(go.Bar(x=list(shapley), y=[float(v) for v in shapley.values()], showlegend=False,
                         marker_color=list(EXPERT_COLOURS[:len(shapley)]),
                         text=[f"{float(v):.3f}" for v in shapley.values()], textposition="outside"), row=1, col=2)
    for colour, (name, t) in zip(EXPERT_COLOURS, (terms or {}).items()):
        t = t.detach().double().cpu()
        fig.add_trace(go.Bar(name=f"term {name}", x=labels, y=(t - t.mean()).tolist(), marker_color=colour,
                             marker_pattern_shape="/", legendgroup=name), row=1, col=3)
    fig.update_xaxes(title_text="class", row=1, col=1)
    fig.update_yaxes(title_text="nats", row=1, col=2)
    fig.update_layout(title=title or "The experts on this sample", barmode="group", height=400, margin=dict(t=90),
                      width=290 * len(panels) + 60,  # fits a notebook column
                      legend=dict(orientation="h", yanchor="top", y=-0.3))
    return fig


CONDITION_COLOURS = ("#4c78a8", "#e45756", "#f58518", "#72b7b2", "#b279a2", "#54a24b")
PID_TERMS = (("redundancy", "redundancy"), ("unique_1", "unique to {a}"), ("unique_2", "unique to {b}"),
             ("synergy", "synergy"))


def dependency_report(report) -> go.Figure:
    """A ``diagnostics.DependencyReport`` as one figure: left, each model's score on the real
    pairs, re-paired within labels (spread over shuffles), with a modality shuffled across
    examples, and under its additive projection (EMAP), against the best constant
    prediction; right, the PID of the data and of each model's predictions."""
    a, b = report.modalities
    models = [r["model"] for r in report.rows]
    conditions = [("score", "real pairs", None), ("shuffled", "re-paired within labels", "shuffled_std"),
                  (f"{a} shuffled", f"{a} shuffled", None), (f"{b} shuffled", f"{b} shuffled", None),
                  ("both shuffled", "both shuffled", None), ("emap_score", "additive projection (EMAP)", None)]
    fig = make_subplots(rows=1, cols=2, column_widths=[0.62, 0.38], horizontal_spacing=0.1, subplot_titles=[
        f"test {report.metric} under each diagnostic", "partial information decomposition (bits)"])
    for colour, (key, label, spread) in zip(CONDITION_COLOURS, conditions):
        fig.add_trace(go.Bar(name=label, x=models, y=[r.get(key) for r in report.rows], marker_color=colour,
                             legendgroup="scores", error_y=None if spread is None else dict(
                                 type="data", array=[r.get(spread, 0) for r in report.rows])), row=1, col=1)
    fig.add_hline(y=report.baseline, line_dash="dash", line_color="black", row=1, col=1,
                  annotation_text=f"best constant {report.baseline:.3f}", annotation_position="bottom left")
    sources = list(report.pid)
    for colour, (key, label) in zip(EXPERT_COLOURS, PID_TERMS):
        fig.add_trace(go.Bar(name=label.format(a=a, b=b), x=sources, y=[report.pid[s][key] for s in sources],
                             marker_color=colour, legendgroup="pid"), row=1, col=2)
    values = [r[k] for r in report.rows for k, _, _ in conditions if r.get(k) is not None]
    fig.update_yaxes(range=[max(0.0, min(values + [report.baseline]) - 0.05), 1.0], title_text=report.metric,
                     row=1, col=1)
    fig.update_layout(barmode="group", height=440, width=1150, legend=dict(groupclick="toggleitem"),
                      title=f"Which dependency dominates? {report.verdict} ({report.examples} examples)")
    return fig


def verdict_map(rows: Sequence[Mapping], x: str = "inter", y: str = "intra", value: str = "label_shuffle_drop",
                model: str = "i2m2", title: str | None = None) -> go.Figure:
    """The diagnostics' verdict in every cell of a regime grid (rows as ``regimes.regime_map``
    returns them with ``diagnose=True``), over ``value`` of ``model``; a cross marks a verdict
    that differs from the dependency the simulator holds."""
    cells = {(r[y], r[x]): r for r in rows if r.get("label") == model and "verdict" in r}
    xs, ys = sorted({k[1] for k in cells}), sorted({k[0] for k in cells})
    z = [[cells[(b, a)][value] if (b, a) in cells else None for a in xs] for b in ys]
    text = [[("" if (b, a) not in cells else
              cells[(b, a)]["verdict"] + (" ✓" if cells[(b, a)]["verdict"] == cells[(b, a)]["expected_verdict"]
                                          else f" ✗ (truth: {cells[(b, a)]['expected_verdict']})"))
             for a in xs] for b in ys]
    fig = go.Figure(go.Heatmap(z=z, x=[str(a) for a in xs], y=[str(b) for b in ys], text=text,
                               texttemplate="%{text}", colorscale="Blues", colorbar=dict(title=value),
                               hovertemplate=f"{y} %{{y}}<br>{x} %{{x}}<br>%{{text}}<br>{value} %{{z:.3f}}<extra></extra>"))
    fig.update_layout(title=title or f"Verdict of the diagnostics in each cell (colour: {model} {value})",
                      xaxis=dict(title=x, type="category"), yaxis=dict(title=y, type="category"),
                      height=120 * len(ys) + 160, width=240 * len(xs) + 200)
    return fig
