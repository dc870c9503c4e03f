"""Live explorers for JupyterLab: ipywidgets controls over the figures of ``plots``.

Widget state does not survive headless execution, so every notebook shows the static figure
beside each explorer; the exported HTML tells the same story without a kernel.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping, Sequence

import ipywidgets as widgets
import plotly.graph_objects as go
import torch

from . import contributions as C
from . import plots
from .data import TensorData
from .experts import I2M2
from .inference import Predictions, predict
from .likelihoods import Categorical
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


class ContributionExplorer(widgets.VBox):
    """What each expert contributes to each prediction, live: see ``contribution_explorer``."""

    def __init__(self, models: I2M2 | Mapping[str, I2M2], data: TensorData | None = None,
                 display: Callable[[int], go.Figure] | None = None, class_names: Sequence[str] | None = None,
                 simulator: SelectionModel | None = None, n: int = 2000, drop: str = "none",
                 max_points: int = 2000, device: str = "auto"):
        super().__init__()
        self.models = dict(models.baselines() if isinstance(models, I2M2) else models)
        if any(not isinstance(m.likelihood, Categorical) for m in self.models.values()):
            raise ValueError("the contribution explorer needs categorical models (a sum of per-class logits)")
        if data is None and simulator is None:
            raise ValueError("give the data to explore, or a simulator to sample it from")
        self.simulator, self.device, self.max_points = simulator, device, max_points
        self.data = data if data is not None else self._sample(simulator, n)
        self.display = display or self._coordinates
        self._predictions: dict[str, Predictions] = {}  # per model, on the current data

        names = list(self.models)
        self.model_choice = widgets.Dropdown(options=names, value="i2m2" if "i2m2" in names else names[-1],
                                             description="model")
        k = self.predictions().logits.shape[1]
        self.class_names = list(class_names or [str(c) for c in range(k)])
        self.class_choice = widgets.Dropdown(options=[("predicted", -1)] + [(c, i) for i, c in enumerate(self.class_names)],
                                             value=-1, description="class")
        self.drop_choice = widgets.Dropdown(description="drop expert")
        self._drop_options(drop)
        self.status, self.selected = widgets.HTML(), widgets.HTML()
        # the sample's view and its experts: figures poured into live widgets (an Output widget
        # would be simpler, but papermill fails on one written to while widget state is off)
        self.scatter, self.sample_view, self.experts_view = go.FigureWidget(), go.FigureWidget(), go.FigureWidget()
        controls = [widgets.HBox([self.model_choice, self.class_choice, self.drop_choice])]
        if simulator is not None:
            self.intra = widgets.FloatSlider(value=simulator.intra[0], min=0.0, max=3.0, step=0.25, description="intra",
                                             continuous_update=False)
            self.inter = widgets.FloatSlider(value=simulator.inter, min=0.0, max=6.0, step=0.5, description="inter",
                                             continuous_update=False)
            self.intra.observe(self._resample, names="value")
            self.inter.observe(self._resample, names="value")
            controls.append(widgets.HBox([self.intra, self.inter]))
        self.children = [*controls, self.status, self.scatter, self.selected, self.sample_view, self.experts_view]
        self.add_class("i2m2kit-contribution-explorer")  # a handle for browser tests and styling

        self.model_choice.observe(self._model_changed, names="value")
        self.class_choice.observe(self._refresh, names="value")
        self.drop_choice.observe(self._refresh, names="value")
        self.redraw()
        self.select(self._interesting_sample())

    # -- data and predictions

    @staticmethod
    def _sample(simulator: SelectionModel, n: int) -> TensorData:
        batch = simulator.sample(n)
        return TensorData({m: x.cpu() for m, x in batch.inputs.items()}, batch.y.cpu())

    def predictions(self) -> Predictions:
        """The chosen model on the current data (computed once per model and data)."""
        name = self.model_choice.value
        if name not in self._predictions:
            self._predictions[name] = predict(self.models[name], self.data, device=self.device)
        return self._predictions[name]

    @property
    def target(self) -> int | None:
        """The class whose margin is split (None: each sample's predicted class)."""
        return None if self.class_choice.value < 0 else self.class_choice.value

    def _coordinates(self, index: int) -> go.Figure:
        return plots.sample_view({m: x[index] for m, x in self.data.inputs.items()}, title=f"sample {index}")

    def _interesting_sample(self) -> int:
        """A sample whose prediction the last (joint) expert changes, else the first."""
        logits = self.predictions().expert_logits
        if len(logits) < 2:
            return 0
        changed = C.flips(logits)[list(logits)[-1]][:self.max_points].nonzero().flatten()
        return int(changed[0]) if len(changed) else 0

    # -- drawing

    def _drop_options(self, keep: str = "none") -> None:
        """The experts the chosen model can drop (a single expert cannot be dropped)."""
        experts = list(self.predictions().expert_logits)
        droppable = experts if len(experts) > 1 else []
        self.drop_choice.options = ["none", *droppable]
        self.drop_choice.value = keep if keep in droppable else "none"

    def redraw(self) -> None:
        """Redraw the scatter for the chosen model, class and dropped expert; say what changed."""
        p, drop = self.predictions(), self.drop_choice.value
        logits, pred = p.expert_logits, p.logits.argmax(1)
        lines = [f"<b>{self.model_choice.value}</b>: accuracy {(pred == p.targets).float().mean():.3f} on {len(pred)} samples"]
        if self.simulator is not None:
            bayes = self.simulator.log_posterior(self.data.inputs).argmax(1).cpu() == self.data.targets
            lines.append(f"Bayes accuracy {bayes.float().mean():.3f} "
                         f"(intra {self.simulator.intra[0]:g}, inter {self.simulator.inter:g})")
        highlight = None
        if drop != "none":
            without = sum(z for n, z in logits.items() if n != drop).argmax(1)
            flipped = without != pred
            highlight = (f"flips without {drop}", flipped)
            lines.append(f"dropping <b>{drop}</b> flips {int(flipped.sum())} predictions ({flipped.float().mean():.1%}): "
                         f"{int((flipped & (without == p.targets)).sum())} to the true class, "
                         f"{int((flipped & (pred == p.targets)).sum())} away from it")
        self.status.value = "; ".join(lines)
        fresh = plots.contribution_scatter(logits, p.targets, max_points=self.max_points, target=self.target,
                                           highlight=highlight)
        _show_in(self.scatter, fresh)
        for trace in self.scatter.data:
            trace.on_click(self._clicked)

    def select(self, index: int) -> None:
        """Show sample ``index``: the display function's view of it, the experts' logits and
        their exact Shapley values (and, on the simulator, the exact posterior's terms)."""
        p = self.predictions()
        self.index = index
        one = {n: z[index:index + 1] for n, z in p.expert_logits.items()}
        predicted = int(p.logits[index].argmax())
        target = predicted if self.target is None else self.target
        phi = {n: float(v) for n, v in C.shapley_values(one, torch.tensor([target])).items()}
        name = self.model_choice.value
        line = (f"<b>sample {index}</b>: true class {self.class_names[int(p.targets[index])]}, "
                f"{name} predicts {self.class_names[predicted]} "
                f"(p = {p.probs[index, predicted]:.3f})")
        terms = None
        if self.simulator is not None:
            inputs = {m: x[index:index + 1] for m, x in self.data.inputs.items()}
            terms = {t: v[0] for t, v in self.simulator.terms(inputs).items()}
            bayes = self.simulator.log_posterior(inputs)[0].exp()
            line += f"; the Bayes posterior says {self.class_names[int(bayes.argmax())]} (p = {bayes.max():.3f})"
        self.selected.value = line
        _show_in(self.sample_view, self.display(index))
        _show_in(self.experts_view, plots.sample_experts({n: z[0] for n, z in one.items()}, phi, target,
                                                         self.class_names, terms,
                                                         title=f"Sample {index}: the experts of {name}"))

    def figures(self) -> dict[str, go.Figure]:
        """What the explorer shows now, as plain figures (widgets do not draw in exported HTML)."""
        return {name: go.Figure(live) for name, live in
                (("scatter", self.scatter), ("sample", self.sample_view), ("experts", self.experts_view))}

    def describe(self) -> str:
        """What the explorer says now (the model's accuracy, the flips, the chosen sample), as text."""
        return re.sub(r"<[^>]+>", "", f"{self.status.value}\n{self.selected.value}").replace("; ", "\n")

    def __repr__(self) -> str:  # what a page without live widgets (an HTML export) shows in its place
        return (f"<contribution explorer of {', '.join(self.models)} on {len(self.data)} samples: "
                f"live in JupyterLab>")

    # -- events

    def _clicked(self, trace, points, _state) -> None:
        if points.point_inds:
            self.select(int(trace.customdata[points.point_inds[0]]))

    def _model_changed(self, _change) -> None:
        self._drop_options(self.drop_choice.value)
        self._refresh()

    def _refresh(self, _change=None) -> None:
        self.redraw()
        self.select(self.index)

    def _resample(self, _change) -> None:
        """Turn the simulator's knobs: the same world (seed, interaction) at new strengths,
        a fresh sample of it, the trained models' view of it against its Bayes posterior."""
        s, intra, inter = self.simulator, round(self.intra.value, 6), round(self.inter.value, 6)  # slider steps drift
        self.simulator = SelectionModel(
            n_classes=s.n_classes, dims=s.dims, intra=(intra, intra), inter=inter,
            interaction_dims=s.m, class_conditional=s.class_conditional, bias=s.bias,
            prior=s.log_prior.exp().cpu().tolist(), seed=s.seed, device=s.device)
        self.data = self._sample(self.simulator, len(self.data))
        self._predictions.clear()
        self._refresh()


def _show_in(live: go.FigureWidget, figure: go.Figure) -> None:
    """Make a live figure show ``figure``: its traces, then its layout (subplots included)."""
    live.data = []
    live.add_traces(figure.data)
    live.layout = figure.layout


def contribution_explorer(models: I2M2 | Mapping[str, I2M2], data: TensorData | None = None, **options: Any) -> ContributionExplorer:
    """The expert-contribution explorer, in one call from any notebook.

    ``models``: a trained I2M2 (its uni-modal, intra, inter and I2M2 models are cut from it)
    or ``{name: model}`` as ``compare_models(..., trained=...)`` fills it. ``data``: the
    samples to explore (a ``TensorData``). Options: ``display`` (sample index -> figure, e.g.
    ``plots.sample_view`` of an image and a spectrogram; default: each modality's
    coordinates), ``class_names``, ``simulator`` (a ``SelectionModel``: adds intra and inter
    sliders that resample the data and compare with its Bayes posterior), ``drop`` (the
    expert dropped at the start), ``max_points``, ``device``.

    Pick a model and a class; each sample is placed by its experts' shares of that class's
    margin (the predicted class's by default), coloured by the expert that decides; click a
    point to see the sample, its experts' logits and exact Shapley values; drop an expert to
    ring the predictions that flip.
    """
    return ContributionExplorer(models, data, **options)
