"""Live explorers for JupyterLab: ipywidgets controls over the figures of ``plots``.

Widget state does not survive headless execution, so every notebook shows the static figure
beside each explorer; the exported HTML tells the same story without a kernel.
"""

from __future__ import annotations

from typing import Any

import ipywidgets as widgets
import plotly.graph_objects as go

from . import plots
from .simulate import SelectionModel


def selection_explorer(n: int = 3000, intra: float = 1.0, inter: float = 2.0, seed: int = 0,
                       **simulator: Any) -> widgets.VBox:
    """Sliders for intra and inter strength that resample the selection-variable model and
    redraw what each kind of model can reach (against the Bayes limit) and where the evidence
    lives."""
    intra_slider = widgets.FloatSlider(value=intra, min=0.0, max=3.0, step=0.25, description="intra")
    inter_slider = widgets.FloatSlider(value=inter, min=0.0, max=6.0, step=0.5, description="inter")
    status = widgets.HTML()

    def draw(a: float, b: float):
        sim = SelectionModel(intra=(a, a), inter=b, seed=seed, **simulator)
        batch = sim.sample(n)
        oracle = sim.oracle_accuracies(batch)
        rows = [{"model": k, "accuracy": v} for k, v in oracle.items()]
        bars = plots.model_accuracy(rows, bayes=oracle["Bayes"], title="What each kind of model can reach")
        scatter = plots.evidence_scatter(sim.terms(batch.inputs), batch.y)
        status.value = f"acceptance rate {batch.acceptance:.2f}, Bayes accuracy {oracle['Bayes']:.3f}"
        return bars, scatter

    bars, scatter = (go.FigureWidget(f) for f in draw(intra, inter))

    def redraw(_change=None):
        new_bars, new_scatter = draw(intra_slider.value, inter_slider.value)
        for live, new in ((bars, new_bars), (scatter, new_scatter)):
            with live.batch_update():
                live.layout.shapes, live.layout.annotations = new.layout.shapes, new.layout.annotations
                live.update_layout(yaxis_range=new.layout.yaxis.range)
                for trace, fresh in zip(live.data, new.data):
                    trace.x, trace.y = fresh.x, fresh.y
                    if hasattr(fresh, "text"):
                        trace.text = fresh.text

    intra_slider.observe(redraw, names="value")
    inter_slider.observe(redraw, names="value")
    return widgets.VBox([widgets.HBox([intra_slider, inter_slider]), status, widgets.HBox([bars, scatter])])
