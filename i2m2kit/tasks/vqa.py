"""Visual question answering: an answer from a picture and a question, with soft targets.

The prepared folder (``data_scripts/prepare_vqa.py``: easy-VQA from its package, or VQA v2
or VQA-VS from their JSON files and COCO images) holds questions, the pictures they ask about, and for
each question a soft score per candidate answer (VQA v2: how many of the ten annotators gave
it, 0.3 per annotator up to 1; easy-VQA: 1 for its one answer). The model answers with its
most probable answer and is scored by that answer's soft score (the VQA score).

The experts (``i2m2kit.vision_language``): ``text`` reads the question (a BERT-style encoder),
``image`` the picture (a small CNN whose cells are regions), ``joint`` both (the question's
tokens attend over the regions). Each gives one log-odds per answer and I2M2 adds them
(``likelihood="soft_scores"``: every answer a Bernoulli whose experts multiply, binary cross-entropy
against the soft scores, the same loss for every model).

    data = vqa.load("data/vqa")                          # splits train / valid / test
    model = vqa.build_model(data)
    recipe = vqa.recipe().replace(monitor=vqa.selection_metric(data))
    ik.fit(model, data.splits["train"], data.splits["valid"], **recipe.fit_arguments())
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .. import contributions, plots, vision_language
from ..data import TensorData
from ..experts import I2M2
from ..inference import Predictions
from ..io import package_folder, read_metadata
from ..metrics import vqa_score
from ..protocol import Recipe, defined_metric
from ..runner import find_folder, prepare_data
from ..vision_language import TextSpec, tokenize

SPLITS = ("train", "valid", "test")


def easy_vqa_dir() -> Path | None:
    """The data folder of the installed ``easy-vqa`` package, or None."""
    return package_folder("easy_vqa", "data", "answers.txt")


@dataclass
class VQAData:
    splits: dict[str, TensorData]  # inputs {"image": (N, 3, S, S) uint8, "text": (N, L) int64}; targets (N, A) scores
    questions: dict[str, list[str]]
    question_types: dict[str, list[str]]
    answer_types: dict[str, list[str]]
    answers: list[str]  # the candidate answers; position = column of the scores
    ood: list[list[str]]  # VQA-VS: the out-of-distribution sets holding each test question (else empty lists)
    text: TextSpec
    metadata: dict[str, Any]

    def best_answer(self, split: str) -> torch.Tensor:
        """(N,) the highest-scoring answer of each question (ties: the first)."""
        return self.splits[split].targets.argmax(1)


def metadata(path: str | Path) -> dict[str, Any]:
    return read_metadata(path, f"python data_scripts/prepare_vqa.py --out {path}")


def read_split(path: str | Path, split: str, answer_index: dict[str, int], limit: int | None = None,
               factor: int = 1) -> tuple[list[dict], torch.Tensor, torch.Tensor]:
    """A split's questions, their pictures (N, 3, S / factor, S / factor) uint8 (block
    averages when ``factor`` > 1) and soft scores (N, A)."""
    path = Path(path)
    questions = [json.loads(line) for line in (path / f"{split}.jsonl").read_text(encoding="utf-8").splitlines() if line]
    questions = questions[:limit]
    images = np.load(path / f"{split}_images.npy", mmap_mode="r")
    rows = np.array([q["image"] for q in questions], dtype=np.int64)
    if images.ndim != 4 or images.shape[-1] != 3 or (len(rows) and rows.max() >= len(images)):
        raise ValueError(f"{path}: {split}_images.npy has shape {images.shape}; the questions need "
                         f"{rows.max() + 1 if len(rows) else 0} RGB pictures (n, S, S, 3)")
    scores = torch.zeros(len(questions), len(answer_index))
    for i, q in enumerate(questions):
        for answer, score in q["answers"].items():
            scores[i, answer_index[answer]] = score
    used, where = np.unique(rows, return_inverse=True)
    pictures = torch.from_numpy(images[used]).permute(0, 3, 1, 2)
    if factor > 1:
        pictures = F.avg_pool2d(pictures.float(), factor).round().to(torch.uint8)
    # a copy per question: training slices whole batches with no lookups
    return questions, pictures[torch.from_numpy(where)].contiguous(), scores


def load(path: str | Path, text_model: str = "auto", image_size: int | None = None,
         limit: dict[str, int] | int | None = None, max_len: int | None = None) -> VQAData:
    """The prepared splits as tensors (pictures kept as uint8: a copy per question).

    ``image_size``: a smaller size to average the pictures down to (a divisor of the prepared
    size); ``limit``: keep only the first questions of each split (an int for the training
    split, or a dict per split), for quick runs."""
    meta = metadata(path)
    answers = list(meta["answers"])
    index = {a: i for i, a in enumerate(answers)}
    prepared = meta["image"]["size"]
    image_size = image_size or prepared
    if prepared % image_size:
        raise ValueError(f"image_size={image_size}: must divide the prepared size {prepared}")
    limits = {"train": limit} if isinstance(limit, int) else dict(limit or {})
    splits, questions = {}, {}
    for split in SPLITS:
        questions[split], pictures, scores = read_split(path, split, index, limits.get(split), prepared // image_size)
        splits[split] = (pictures, scores)
    texts = {s: [q["question"] for q in qs] for s, qs in questions.items()}
    ids, spec = tokenize(texts, text_model, max_len)
    return VQAData(
        {s: TensorData({"image": pictures, "text": ids[s]}, scores) for s, (pictures, scores) in splits.items()},
        texts,
        {s: [q["question_type"] for q in qs] for s, qs in questions.items()},
        {s: [q["answer_type"] for q in qs] for s, qs in questions.items()},
        answers, [q.get("ood", []) for q in questions["test"]], spec, meta)


def prior_baseline(data: VQAData) -> dict[str, float]:
    """VQA score of always giving the answer with the highest total score in training."""
    answer = int(data.splits["train"].targets.sum(0).argmax())
    return {s: float(d.targets[:, answer].mean()) for s, d in data.splits.items()}


def score_by_group(probs: torch.Tensor | np.ndarray, scores: torch.Tensor | np.ndarray,
                   groups: list[str] | list[list[str]]) -> dict[str, float]:
    """The VQA score within each group of questions (question or answer type). A question may
    be in several groups, given as a list (VQA-VS's out-of-distribution sets), or in none."""
    members: dict[str, list[int]] = {}
    for i, group in enumerate(groups):
        for name in [group] if isinstance(group, str) else group:
            members.setdefault(name, []).append(i)
    probs, scores = np.asarray(probs), np.asarray(scores)
    return {g: vqa_score(probs[rows], scores[rows]) for g, rows in members.items()}


def ood_scores(probs: torch.Tensor | np.ndarray, data: VQAData) -> dict[str, float]:
    """VQA-VS: the test VQA score on the whole in-distribution test set ("IID"), on each
    out-of-distribution set (the test questions where a shortcut learnt in training, such as the
    question type or a key object, points to a wrong answer) and their mean ("OOD mean", the
    benchmark's summary). Empty when the data has no such sets."""
    sets = list(data.metadata.get("ood_sets") or {})
    if not sets:
        return {}
    scores = data.splits["test"].targets
    per_set = score_by_group(probs, scores, data.ood)
    found = [s for s in sets if s in per_set]  # a set may be empty in a --limit build
    return {"IID": vqa_score(np.asarray(probs), np.asarray(scores)), **{s: per_set[s] for s in found},
            "OOD mean": float(np.mean([per_set[s] for s in found])) if found else float("nan")}


def build_model(data: VQAData | None = None, image_width: int = 32, image_blocks: int = 3, text_width: int = 64,
                text_layers: int = 2, fusion: str = "attention", hidden: int = 64, shared_backbone: bool = False,
                text: TextSpec | None = None, n_answers: int | None = None, image_model: str = "scratch") -> I2M2:
    """I2M2 with experts ``image``, ``text`` (the question) and ``joint``, one log-odds per answer.

    The question tokens and the answers are those of ``data`` (what ``load`` returned), or
    given as ``text`` and ``n_answers``; the text encoder is the one the tokens were made for
    (``load``'s ``text_model``). ``image_model``: ``"scratch"`` (a ``GridEncoder`` of
    ``image_width`` and ``image_blocks``) or a ``transformers`` vision checkpoint."""
    text = text or (data.text if data is not None else None)
    n_answers = n_answers or (len(data.answers) if data is not None else None)
    if text is None or n_answers is None:
        raise ValueError("build_model needs the data (vqa.load's result), or text= and n_answers=")
    return vision_language.build_model(functools.partial(vision_language.image_encoder, image_model, image_width,
                                                         image_blocks), text,
                                       n_answers, likelihood="soft_scores", text_width=text_width,
                                       text_layers=text_layers, fusion=fusion, hidden=hidden,
                                       shared_backbone=shared_backbone)


def recipe(epochs: int | None = None, regime: str = "joint", lr: float | None = None) -> Recipe:
    """``fit`` arguments (``vision_language.recipe``: 10 epochs by default), selecting on the
    validation VQA score."""
    return vision_language.recipe(10 if epochs is None else epochs, regime, lr, monitor="vqa_score")


def selection_metric(data: VQAData, preferred: str | None = None) -> str:
    """``preferred`` (default: the recipe's monitor, the VQA score) when it is defined on the
    validation split, else ``"loss"``."""
    return defined_metric(data.splits["valid"], "soft_scores", len(data.answers),
                          preferred or recipe().monitor)


# ---------------------------------------------------------------------- what the notebook shows


def prepare(prepared: str | Path, dataset: str = "easy-vqa", data_dir: str | None = None,
            images_dir: str | None = None, min_answer_count: int = 9) -> Path:
    """The prepared folder, made from the raw files unless it was made from the same ones:
    ``data_dir`` (looked up from here and the repository root), or the installed easy-VQA."""
    prepared = Path(prepared)
    made = (prepared / "metadata.json").exists()
    raw = None  # none at hand: a prepared folder is used as it was recorded
    if data_dir is not None:
        raw = find_folder(data_dir)
        if raw is None and not made:
            raise FileNotFoundError(f"data_dir={data_dir!r}: no such folder here or in the repository")
    elif dataset == "easy-vqa":
        raw = easy_vqa_dir()
        if raw is None and not made:
            raise ModuleNotFoundError("dataset='easy-vqa' needs the easy-vqa package: pip install easy-vqa")
    elif not made:
        raise ValueError(f"parameter data_dir=None: dataset={dataset!r} needs the folder of its JSON files")
    images = ("--images", images_dir) if images_dir else ()
    prepare_data("vqa", raw, prepared, args=("--no-progress", "--dataset", dataset,
                                             "--min-answer-count", str(min_answer_count), *images))
    return prepared


def describe(data: VQAData) -> dict[str, Any]:
    """Print the answers, each split's size and prior score, the tokens and the pictures;
    return the splits' sizes and the prior baseline (``"splits"``, ``"prior_baseline"``)."""
    meta, prior = data.metadata, prior_baseline(data)
    print(f"{meta['dataset']}: {len(data.answers)} candidate answers; {meta['scores']}")
    for split in SPLITS:
        print(f"{split:5s} {len(data.splits[split]):6d} questions (of {meta['counts'][split]['questions']}), "
              f"prior answer scores {prior[split]:.3f}")
    print(f"questions: {data.text.model} tokens, vocabulary {data.text.vocab_size}, {data.text.max_len} per question; "
          f"pictures {tuple(data.splits['train'].inputs['image'].shape[1:])}")
    return {"splits": {s: len(d) for s, d in data.splits.items()}, "prior_baseline": prior}


def caption(data: VQAData, split: str, i: int, extra: str = "") -> str:
    """The question and its best-scored answer (plotly titles break lines at <br>)."""
    best = data.answers[int(data.best_answer(split)[i])]
    return f"{data.questions[split][i]}<br><b>{best}</b>{extra}"


def show_questions(data: VQAData, chosen: Sequence[int], title: str, split: str = "test",
                   extra=lambda i: ""):
    """The pictures of some questions, each under its question and best-scored answer."""
    return plots.examples({"picture": data.splits[split].inputs["image"][list(chosen)]},
                          [caption(data, split, i, extra(i)) for i in chosen], title=title)


def scores_by_type(data: VQAData, predictions: dict[str, Predictions]) -> dict[str, Any]:
    """Each model's test VQA score per answer type (``"by_answer_type"``, keyed "model, type")
    and per question template (``"by_question_type"``: model -> template -> score)."""
    def by(groups):
        return {name: score_by_group(p.probs, p.targets, groups) for name, p in predictions.items()}

    by_answer = by(data.answer_types["test"])
    return {"by_answer_type": {f"{m}, {g}": v for m, per in by_answer.items() for g, v in per.items()},
            "by_question_type": by(data.question_types["test"])}


def plot_answer_types(by_answer_type: dict[str, float]):
    rows = [{"model": k.split(", ")[0], "answer type": k.split(", ")[1], "vqa_score": v} for k, v in by_answer_type.items()]
    return plots.grouped_bars(rows, "answer type", "model", "vqa_score",
                              title="Test VQA score by answer type (first seed)", y_title="VQA score")


def known_from_question(by_template: dict[str, dict[str, float]], threshold: float = 0.8) -> list[str]:
    """Print and return the question templates the question-only model answers right at least
    ``threshold`` of the time, each with I2M2's score."""
    templates = sorted(by_template["i2m2"], key=lambda t: -by_template["uni:text"][t])
    known = [t for t in templates if by_template["uni:text"][t] >= threshold]
    print(f"question types the question alone answers right at least {threshold:.0%} of the time: "
          f"{len(known)} of {len(templates)}")
    for t in known:
        print(f"  {t!r}: question only {by_template['uni:text'][t]:.3f}, I2M2 {by_template['i2m2'][t]:.3f}")
    return known


def plot_question_types(by_template: dict[str, dict[str, float]]):
    """Every template's score, for the question-only, picture-only and I2M2 models, the
    templates the question answers best first."""
    templates = sorted(by_template["i2m2"], key=lambda t: -by_template["uni:text"][t])
    rows = [{"model": m, "question type": t, "vqa_score": by_template[m][t]}
            for m in ("uni:text", "uni:image", "i2m2") for t in templates]
    return plots.grouped_bars(rows, "question type", "model", "vqa_score",
                              title="Test VQA score by question type: question only, picture only, I2M2 (first seed)",
                              y_title="VQA score")


def plot_ood(ood: dict[str, dict[str, float]]):
    """VQA-VS: each model's score in distribution and on each out-of-distribution set."""
    return plots.grouped_bars([{"model": m, "test set": s, "vqa_score": v} for m, per in ood.items()
                               for s, v in per.items()], "test set", "model", "vqa_score",
                              title="Test VQA score, in distribution and on each out-of-distribution set "
                                    "(first seed)", y_title="VQA score")


def decisive_questions(data: VQAData, pred: Predictions, shown: int = 5) -> tuple[dict[str, Any], list]:
    """The test questions whose answer the question expert decides (it holds the largest share
    of the margin) and those the joint expert overrules (dropping it changes the answer):
    printed, counted (``"question_decides"``, ``"joint_overrules"``: count and right) and
    the first ``shown`` of each drawn, each with every expert's own answer."""
    best, final = data.best_answer("test"), pred.logits.argmax(1)
    calls = {n: z.argmax(1) for n, z in pred.expert_logits.items()}
    by_question = [i for i, d in enumerate(contributions.deciding_expert(pred.expert_logits)) if d == "text"]
    overruled = contributions.flips(pred.expert_logits)["joint"].nonzero().flatten().tolist()

    def right(idx):
        return int((final[idx] == best[idx]).sum()) if idx else 0

    print(f"the question expert decides {len(by_question)} of {len(final)} test answers (right on {right(by_question)}); "
          f"the joint expert overrules the others on {len(overruled)} (right on {right(overruled)})")

    def says(i):
        return "<br>" + ", ".join(f"{n}: {data.answers[int(calls[n][i])]}" for n in calls)

    figures = [show_questions(data, chosen[:shown], title, extra=says)
               for title, chosen in (("The question expert decides", by_question),
                                     ("The joint expert overrules the picture and question experts", overruled))
               if chosen]
    return {"question_decides": {"count": len(by_question), "right": right(by_question)},
            "joint_overrules": {"count": len(overruled), "right": right(overruled)}}, figures
