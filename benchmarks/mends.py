"""Where I2M2 falls below its own baselines, and mends that keep it a product of experts.

Notebook 00's second map (x2 256-dimensional, mostly nuisance, weak class signal) shows the
published I2M2 several points of the Bayes ratio below the uni-modal model of the good
modality at small n. For each cell (inter strength, n_train) and seed this trains the five
models of the paper (jointly, and I2M2 / intra pretrained expert by expert), measures why
(each expert's accuracy alone inside the trained I2M2, the joint expert's train/validation
gap, the epoch early stopping picked) and scores the mends, each computed from the same
trained experts unless it needs its own training:

* ``i2m2 (weighted)``: one non-negative exponent per expert, fitted on validation (a weighted
  product of experts, p(y|x) ~ prod_e p_e(y|x)^w_e), on the experts trained alone (the
  uni-modal and inter models), as ``compare_models(weigh=True)`` gives it;
* ``i2m2 (selected)``: the better of that and the published I2M2 on validation (the same call);
* ``weights (joint)``: the exponents fitted on the jointly trained I2M2's experts instead;
* ``subset (experts)``: the subset of the experts trained alone best on validation (the
  uni-modal and inter models are such subsets, so this contains them);
* ``expert dropout``: I2M2 trained with each expert left out of an example's sum with
  probability ``--dropout`` (each expert must then stand on its own).

Prints one row per cell, seed and model, and the bar of issue 21 (within 0.5 points of the
best baseline) per cell. ``--json`` writes every row.

    python benchmarks/mends.py --sizes 1000 5000 --inter 0 2 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import sys
import time
from pathlib import Path

import torch

import i2m2kit as ik
from i2m2kit.simulate import SelectionModel
from i2m2kit.inference import predict
from i2m2kit.tasks import synthetic

# notebook 00's two maps: the regime grid (section 5) and high-dimensional nuisance (section 6)
MAPS = {"hard": {"n_classes": 2, "dims": (8, 256), "intra": (2.0, 0.5), "interaction_dims": 4},
        "grid": {"n_classes": 2, "dims": (8, 8)}}
BASELINES = ("uni:x", "uni:x2", "intra", "inter")


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(-1) == y).double().mean())


class ExpertDropout(ik.I2M2):
    """I2M2 whose sum, in training, leaves each expert out of each example with probability p
    (at least one expert kept): every expert must classify on its own."""

    def __init__(self, model: ik.I2M2, p: float):
        super().__init__(dict(model.experts), likelihood=model.likelihood, modalities=model.modalities)
        self.p = p

    def forward(self, inputs, strict=False):
        out = super().forward(inputs, strict)
        if not self.training or self.p == 0:
            return out
        z = torch.stack(list(out.expert_logits.values()))  # (E, N, C)
        keep = (torch.rand(z.shape[:2], device=z.device) >= self.p).to(z.dtype)
        none = keep.sum(0) == 0
        keep[torch.randint(len(z), (int(none.sum()),), device=z.device), none.nonzero().squeeze(-1)] = 1
        logits = (keep[..., None] * z).sum(0)
        return out.__class__(logits, out.expert_logits, self.likelihood.log_probs(logits))


def cell(inter: float, n: int, seed: int, args, intra: float | None = None) -> list[dict]:
    simulator = dict(MAPS[args.map], **({} if intra is None else {"intra": (intra, intra)}))
    sim = SelectionModel(seed=seed, inter=inter, **simulator)
    train_all, valid, test = (sim.sample(k) for k in (n, args.n_valid, args.n_test))
    data = {k: synthetic.dataset(b) for k, b in (("train", train_all), ("valid", valid), ("test", test))}
    bayes = sim.bayes_accuracy(test)
    fit = dict(epochs=args.epochs, patience=args.patience, monitor="accuracy", batch_size=128, device="cpu")
    build = lambda: synthetic.build_model(sim.dims, sim.n_classes, args.hidden)  # noqa: E731
    rows, trained, results = [], {}, {}
    started = time.perf_counter()
    for r in ik.compare_models(build, data["train"], data["valid"], data["test"], seed=seed, progress=False,
                               trained=trained, fit_results=results, weigh=True, **fit):
        rows.append({"model": r["model"], "accuracy": r["accuracy"], "best_epoch": r["best_epoch"],
                     **{k: r[k] for k in ("weights", "selected") if k in r}})
    pre = {}
    for r in ik.compare_models(build, data["train"], data["valid"], data["test"], seed=seed, progress=False,
                               names=("intra", "i2m2"), regime="pretrain_finetune", trained=pre, **fit):
        rows.append({"model": f"{r['model']} (pretrained)", "accuracy": r["accuracy"], "best_epoch": r["best_epoch"]})

    # why: each expert alone inside the jointly trained I2M2, and the joint expert's gap
    inside = {name: predict(trained["i2m2"], data[name], device="cpu") for name in ("train", "valid", "test")}
    why = {f"alone in I2M2: {e}": accuracy(inside["test"].expert_logits[e], data["test"].targets)
           for e in inside["test"].expert_logits}
    inter_model = {s: predict(trained["inter"], data[s], device="cpu") for s in ("train", "valid")}
    why["inter: train - valid accuracy"] = (accuracy(inter_model["train"].logits, data["train"].targets)
                                            - accuracy(inter_model["valid"].logits, data["valid"].targets))
    why["i2m2: train - valid accuracy"] = (accuracy(inside["train"].logits, data["train"].targets)
                                           - accuracy(inside["valid"].logits, data["valid"].targets))

    # mends from the trained experts
    yv, yt = data["valid"].targets, data["test"].targets
    names = list(inside["test"].expert_logits)
    joint = copy.deepcopy(trained["i2m2"])  # the jointly trained experts, weighed the same way
    w = ik.weigh_experts(joint, data["valid"], device="cpu")
    rows.append({"model": "weights (joint)", "weights": w,
                 "accuracy": accuracy(predict(joint, data["test"], device="cpu").logits, yt)})
    alone = {"x": trained["uni:x"], "x2": trained["uni:x2"], "joint": trained["inter"]}  # the experts trained alone
    own = {s: {e: predict(m, data[s], device="cpu").expert_logits[e] for e, m in alone.items()} for s in ("valid", "test")}
    subsets = [s for r in range(1, len(names) + 1) for s in itertools.combinations(names, r)]
    best = max(subsets, key=lambda s: accuracy(sum(own["valid"][e] for e in s), yv))
    rows.append({"model": "subset (experts)", "subset": "+".join(best),
                 "accuracy": accuracy(sum(own["test"][e] for e in best), yt)})
    torch.manual_seed(seed)
    dropped = ExpertDropout(build(), args.dropout)
    result = ik.fit(dropped, data["train"], data["valid"], seed=seed, progress=False, **fit)
    rows.append({"model": f"expert dropout {args.dropout:g}", "best_epoch": result.best_epoch,
                 "accuracy": accuracy(predict(dropped, data["test"], device="cpu").logits, yt)})
    for r in rows:
        r.update(intra=simulator["intra"][0] if "intra" in simulator else 1.0, inter=inter, n_train=n, seed=seed,
                 bayes_accuracy=bayes)
    rows.append({"model": "why", "inter": inter, "n_train": n, "seed": seed, **why,
                 "seconds": time.perf_counter() - started})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--map", choices=sorted(MAPS), default="hard", help="hard: section 6's map; grid: section 5's")
    parser.add_argument("--intra", type=float, nargs="+", default=None,
                        help="grid map: the intra strengths (default 0 1 2); hard map: as in notebook 00")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 20000])
    parser.add_argument("--inter", type=float, nargs="+", default=[0.0, 2.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n-valid", type=int, default=5000)
    parser.add_argument("--n-test", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--patience", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--dropout", type=float, default=0.3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    every = []
    intras = args.intra or ([0.0, 1.0, 2.0] if args.map == "grid" else [None])
    for intra, inter, n, seed in itertools.product(intras, args.inter, args.sizes, args.seeds):
        rows = cell(inter, n, seed, args, intra)
        every += rows
        scored = {r["model"]: r["accuracy"] for r in rows if "accuracy" in r}
        best = max(scored[b] for b in BASELINES)
        print(f"\n{'' if intra is None else f'intra {intra:g}, '}inter {inter:g}, n_train {n}, seed {seed}: Bayes {rows[0]['bayes_accuracy']:.4f}, "
              f"best baseline {best:.4f}")
        for name, acc in scored.items():
            extra = next((f" {k}={r[k]}" for r in rows if r["model"] == name for k in ("weights", "subset", "selected") if k in r), "")
            mark = "" if name in BASELINES else ("  ok" if acc >= best - 0.005 else f"  {100 * (acc - best):+.2f} pt")
            print(f"  {name:26s} {acc:.4f}{mark}{extra}")
        why = next(r for r in rows if r["model"] == "why")
        print("  " + "; ".join(f"{k} {v:.3f}" for k, v in why.items() if isinstance(v, float)))
        sys.stdout.flush()
    if args.json:
        args.json.write_text(json.dumps(every, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
