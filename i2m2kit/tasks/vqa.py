"""Visual question answering: an answer from a picture and a question, with soft targets.

The prepared folder (``data_scripts/prepare_vqa.py``: easy-VQA from its package, or VQA v2
or VQA-VS from their JSON files and COCO images) holds questions, the pictures they ask about, and for
each question a soft score per candidate answer (VQA v2: how many of the ten annotators gave
it, 0.3 per annotator up to 1; easy-VQA: 1 for its one answer). The model answers with its
most probable answer and is scored by that answer's soft score (the VQA score).

The experts (``vision_language``): ``text`` reads the question (a BERT-style encoder),
``image`` the picture (a small CNN whose cells are regions), ``joint`` both (the question's
tokens attend over the regions). Each gives one log-odds per answer and I2M2 adds them
(``likelihood="soft_scores"``: every answer a Bernoulli whose experts multiply, binary cross-entropy
against the soft scores, the same loss for every model).

    data = vqa.load("data/vqa")                          # splits train / valid / test
    model = vqa.build_model(data)
    ik.fit(model, data.splits["train"], data.splits["valid"], **vqa.recipe())
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..experts import I2M2
from ..io import package_folder, read_metadata
from ..metrics import vqa_score
from ..data import TensorData
from . import vision_language
from .vision_language import GridEncoder, TextSpec, tokenize

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


def build_model(data: VQAData, image_width: int = 32, image_blocks: int = 3, text_width: int = 64,
                text_layers: int = 2, fusion: str = "attention", hidden: int = 64,
                shared_backbone: bool = False) -> I2M2:
    """I2M2 with experts ``image``, ``text`` (the question) and ``joint``, one log-odds per answer."""
    return vision_language.build_model(functools.partial(GridEncoder, image_width, image_blocks), data.text,
                                       len(data.answers), likelihood="soft_scores", text_width=text_width,
                                       text_layers=text_layers, fusion=fusion, hidden=hidden,
                                       shared_backbone=shared_backbone)


def recipe(epochs: int = 10, regime: str = "joint", lr: float | None = None) -> dict[str, Any]:
    """``fit`` arguments (``vision_language.recipe``), selecting on the validation VQA score."""
    return vision_language.recipe(epochs, regime, lr, monitor="vqa_score")
