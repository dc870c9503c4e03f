#!/usr/bin/env python
"""Build a visual-question-answering data set for I2M2: questions, soft answer scores and images.

Two inputs, told apart by the files in ``--raw`` (or forced with ``--dataset``):

* easy-VQA (github.com/vzhou842/easy-VQA; the ``easy-vqa`` package ships it, and ``--raw``
  defaults to the installed copy): ``answers.txt`` (13 answers, one a line),
  ``train/questions.json`` and ``test/questions.json`` (a JSON list of
  ``[question, answer, image_id]``) and ``{train,test}/images/<image_id>.png`` (64 x 64).
  Every question has one answer, which scores 1.0. The vocabulary is answers.txt, in its
  order. ``answer_type`` is "yes/no", "shape" (circle, rectangle, triangle) or "color";
  ``question_type`` is the question with its shape words replaced by ``<shape>`` and its
  colour words by ``<color>`` (24 templates). easy-VQA has no question ids: a question's id
  is ``<published split>-<entry index>`` (``train-0``, ``test-17``).

* VQA v2 (visualqa.org), as downloaded and unpacked:
  ``v2_OpenEnded_mscoco_{train,val}2014_questions.json``,
  ``v2_mscoco_{train,val}2014_annotations.json`` (10 answers per question) and the COCO
  images ``train2014/COCO_train2014_%012d.jpg``, ``val2014/COCO_val2014_%012d.jpg``.
  Answers are normalised before they are counted or scored, in the spirit of the official
  evaluation: lower case; apostrophes dropped; other punctuation made a space, except a
  ``.`` or ``,`` between digits (1.5, 1,000); number words zero to ten made digits; the
  articles a, an, the dropped; white space collapsed. The vocabulary is the normalised
  ``multiple_choice_answer`` values seen at least ``--min-answer-count`` times (default 9:
  3,129 answers on the full train2014 + val2014, the usual preprocessing) over train2014 +
  val2014, or over the training split only (``--vocab-from train``); most frequent first.
  The soft score of an answer is the VQA accuracy: the mean, over the n leave-one-annotator-
  out subsets, of min(1, matches / 3); with 10 annotators an answer given 1, 2, 3, 4+ times
  scores 0.3, 0.6, 0.9, 1.0. Answers outside the vocabulary are dropped from the scores.
  ``question_type`` and ``answer_type`` are the annotation's. Images are resized (JPEG
  decoded at a reduced scale first where that still leaves at least the asked size) to
  ``--image-size`` squares, the whole picture (aspect ratio not kept), RGB, bilinear.

Splits (the same for both): ``train`` is the published training split less its validation
part; ``valid`` is the last ``--valid-fraction`` (default 0.1) of the training split's
images, by sorted image id, with all their questions (image-disjoint from train,
deterministic); ``test`` is easy-VQA's test split / VQA v2's val2014. ``--limit N`` keeps the
first N questions of each published split (quick runs).

Any malformed JSON, missing field, unknown answer, question without its annotation, or
missing or unreadable image stops the run with one line naming the file, the entry and the
field; nothing is written then.

Output (``--out``, a folder written atomically; an existing one only with ``--overwrite``):
  train.jsonl, valid.jsonl, test.jsonl  one question a line: question_id, question, image (row
                                        in the split's image array), image_id, question_type,
                                        answer_type, answer (normalised, kept even when outside
                                        the vocabulary), answers ({answer: score > 0}, vocabulary
                                        answers only; may be empty)
  train_images.npy, ...                 (n_images, S, S, 3) uint8, one row per distinct image
                                        of the split, in order of first use
  metadata.json                         vocabulary (position = column), counts, parameters,
                                        sources, out-of-vocabulary fractions

    python data_scripts/prepare_vqa.py --out data/vqa                       # easy-VQA, installed
    python data_scripts/prepare_vqa.py --raw ~/vqa2 --out data/vqa2 --image-size 64
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from i2m2kit.io import atomic_path, package_folder

FORMAT_VERSION = 1
DATASETS = ("easy-vqa", "vqa-v2")
SPLITS = ("train", "valid", "test")
VOCAB_FROM = ("train+val", "train")
IMAGE_SIZE, VALID_FRACTION, MIN_ANSWER_COUNT = 64, 0.1, 9
MIN_IMAGE_SIZE = 8

# easy-VQA
EASY_ANSWERS, EASY_PUBLISHED = "answers.txt", ("train", "test")  # published splits: <split>/questions.json
EASY_SHAPES = ("circle", "rectangle", "triangle")
EASY_YES_NO = ("yes", "no")
EASY_FIELDS = ("question", "answer", "image_id")  # the positions of a question entry

# VQA v2: published split -> (questions file, annotations file, image folder, image file pattern)
V2 = {
    "train2014": ("v2_OpenEnded_mscoco_train2014_questions.json", "v2_mscoco_train2014_annotations.json",
                  "train2014", "COCO_train2014_{:012d}.jpg"),
    "val2014": ("v2_OpenEnded_mscoco_val2014_questions.json", "v2_mscoco_val2014_annotations.json",
                "val2014", "COCO_val2014_{:012d}.jpg"),
}
NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"))}
ARTICLES = frozenset(("a", "an", "the"))
PUNCTUATION = re.compile(r"(?!(?<=\d)[.,]\d)(?:[^\w\s]|_)")  # all but the . or , of 1.5, 1,000


class PrepareError(Exception):
    """Invalid input or parameter: the message names the file, the entry and the field."""


# ---------------------------------------------------------------------- answers and scores


@functools.lru_cache(maxsize=None)
def normalize_answer(text: str) -> str:
    """A VQA answer in the comparable form: "Two dogs!" -> "2 dogs", "the dog." -> "dog"."""
    text = PUNCTUATION.sub(" ", text.lower().replace("'", "").replace("\u2019", ""))
    words = [NUMBER_WORDS.get(w, w) for w in text.split() if w not in ARTICLES]
    return " ".join(words)


@functools.lru_cache(maxsize=None)
def vqa_score(matches: int, annotators: int) -> float:
    """The VQA accuracy of an answer given by ``matches`` of ``annotators`` people: the mean over
    the leave-one-out subsets of min(1, matches among the others / 3)."""
    total = matches * min(1.0, (matches - 1) / 3) + (annotators - matches) * min(1.0, matches / 3)
    return round(total / annotators, 6)


def soft_scores(given: Counter, annotators: int, vocabulary: dict) -> dict:
    """{answer: score} of the vocabulary answers among ``given`` (normalised answer -> count)."""
    scores = {a: vqa_score(m, annotators) for a, m in given.items() if a in vocabulary}
    return dict(sorted(((a, s) for a, s in scores.items() if s > 0), key=lambda x: (-x[1], vocabulary[x[0]])))


# ---------------------------------------------------------------------- reading and checking


def easy_vqa_dir() -> Path | None:
    """The data folder of the installed ``easy-vqa`` package, or None (nothing is imported)."""
    return package_folder("easy_vqa", "data", EASY_ANSWERS)


def read_json(path: Path, raw: Path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise PrepareError(f"{rel(path, raw)}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except UnicodeDecodeError as e:
        raise PrepareError(f"{rel(path, raw)}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise PrepareError(f"{rel(path, raw)}: cannot be read ({e.strerror or e})") from None


def rel(path: Path, raw: Path) -> str:
    try:
        return path.relative_to(raw).as_posix()
    except ValueError:
        return str(path)


def _image_id(value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PrepareError(f"{where}: field 'image_id': expected a non-negative integer, got {value!r}")
    return value


def _text(value, where: str, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise PrepareError(f"{where}: field {field!r}: expected a non-empty string, got {value!r}")
    return value.strip()


def detect(raw: Path) -> str:
    if (raw / EASY_ANSWERS).is_file() and (raw / "train" / "questions.json").is_file():
        return "easy-vqa"
    if any((raw / name).is_file() for files in V2.values() for name in files[:2]):
        return "vqa-v2"
    v2 = ", ".join(name for files in V2.values() for name in files[:2])
    raise PrepareError(f"{raw}: neither layout recognised: expected {EASY_ANSWERS} and train/questions.json "
                       f"(easy-VQA) or {v2} (VQA v2)")


def require(raw: Path, names: Sequence[str], dataset: str) -> None:
    missing = [n for n in names if not (raw / n).is_file()]
    if missing:
        raise PrepareError(f"{raw}: not a complete {dataset} folder: no {', '.join(missing)}")


def read_easy_vqa(raw: Path, limit: int | None) -> tuple[dict, list[str], dict]:
    """{published split: [question]}, the vocabulary, and the source files."""
    names = [EASY_ANSWERS, *(f"{s}/questions.json" for s in EASY_PUBLISHED)]
    require(raw, names, "easy-VQA")
    answers, seen = [], set()
    for number, line in enumerate((raw / EASY_ANSWERS).read_text(encoding="utf-8").splitlines(), start=1):
        answer = line.strip()
        if answer in seen:
            raise PrepareError(f"{EASY_ANSWERS} line {number}: answer {answer!r} listed twice")
        if answer:
            answers.append(answer)
            seen.add(answer)
    if not answers:
        raise PrepareError(f"{EASY_ANSWERS}: no answers")
    colours = [a for a in answers if a not in EASY_SHAPES and a not in EASY_YES_NO]
    words = re.compile(r"\b(?:(?P<shape>" + "|".join(map(re.escape, EASY_SHAPES)) + r")|(?P<color>"
                       + "|".join(map(re.escape, colours or ["\0"])) + r"))\b")

    def template(question: str) -> str:
        return words.sub(lambda m: "<shape>" if m.group("shape") else "<color>", question)

    def answer_type(answer: str) -> str:
        return "yes/no" if answer in EASY_YES_NO else "shape" if answer in EASY_SHAPES else "color"

    published = {}
    for split in EASY_PUBLISHED:
        name = f"{split}/questions.json"
        entries = read_json(raw / name, raw)
        if not isinstance(entries, list):
            raise PrepareError(f"{name}: expected a JSON list of [question, answer, image_id], "
                               f"got {type(entries).__name__}")
        questions = []
        for index, entry in enumerate(entries[:limit]):
            where = f"{name} entry {index}"
            if not isinstance(entry, list) or len(entry) != len(EASY_FIELDS):
                missing = (f" (no field {EASY_FIELDS[len(entry)]!r})"
                           if isinstance(entry, list) and len(entry) < len(EASY_FIELDS) else "")
                raise PrepareError(f"{where}: expected a list [question, answer, image_id], got "
                                   f"{type(entry).__name__}{f' of {len(entry)}' if isinstance(entry, list) else ''}"
                                   f"{missing}")
            text, answer, image_id = entry
            text = _text(text, where, "question")
            if not isinstance(answer, str) or answer not in seen:
                raise PrepareError(f"{where}: field 'answer': unknown answer {answer!r} (not in {EASY_ANSWERS})")
            image_id = _image_id(image_id, where)
            questions.append({"question_id": f"{split}-{index}", "question": text, "image_id": image_id,
                              "question_type": template(text), "answer_type": answer_type(answer),
                              "answer": answer, "answers": {answer: 1.0},
                              "path": f"{split}/images/{image_id}.png", "where": where})
        published[split] = questions
    sources = {n: (raw / n).stat().st_size for n in names}
    return published, answers, sources


def read_v2_split(raw: Path, split: str, limit: int | None, progress: bool) -> list[dict]:
    """The questions of one published VQA v2 split, joined with their annotations; ``answers`` holds
    the normalised annotators' answers (a Counter) and ``annotators`` their number, for now."""
    qname, aname, folder, pattern = V2[split]
    qdata, adata = read_json(raw / qname, raw), read_json(raw / aname, raw)
    for name, data, key in ((qname, qdata, "questions"), (aname, adata, "annotations")):
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            raise PrepareError(f"{name}: expected a JSON object with a {key!r} list")
    index = {}
    for i, annotation in enumerate(adata["annotations"]):
        where = f"{aname} annotations[{i}]"
        if not isinstance(annotation, dict):
            raise PrepareError(f"{where}: expected an object, got {type(annotation).__name__}")
        if "question_id" not in annotation:
            raise PrepareError(f"{where}: no field 'question_id'")
        qid = str(annotation["question_id"])
        if qid in index:
            raise PrepareError(f"{where}: question_id {qid} annotated twice (also annotations[{index[qid][0]}])")
        index[qid] = (i, annotation)

    questions = []
    entries = qdata["questions"][:limit]
    for i, entry in enumerate(tqdm(entries, desc=f"{split} questions", disable=not progress, mininterval=1)):
        where = f"{qname} questions[{i}]"
        if not isinstance(entry, dict):
            raise PrepareError(f"{where}: expected an object, got {type(entry).__name__}")
        for key in ("image_id", "question", "question_id"):
            if key not in entry:
                raise PrepareError(f"{where}: no field {key!r}")
        image_id = _image_id(entry["image_id"], where)
        text = _text(entry["question"], where, "question")
        qid = entry["question_id"]
        if isinstance(qid, bool) or not isinstance(qid, (int, str)) or str(qid) == "":
            raise PrepareError(f"{where}: field 'question_id': expected an integer or a string, got {qid!r}")
        qid = str(qid)
        if qid not in index:
            raise PrepareError(f"{aname}: no annotation for question_id {qid} ({where})")
        a, annotation = index[qid]
        at = f"{aname} annotations[{a}] (question_id {qid})"
        for key in ("question_type", "answer_type", "multiple_choice_answer", "answers"):
            if key not in annotation:
                raise PrepareError(f"{at}: no field {key!r}")
        for key in ("question_type", "answer_type", "multiple_choice_answer"):
            if not isinstance(annotation[key], str):
                raise PrepareError(f"{at}: field {key!r}: expected a string, got {annotation[key]!r}")
        if "image_id" in annotation and annotation["image_id"] != image_id:
            raise PrepareError(f"{at}: field 'image_id': {annotation['image_id']!r}, but {where} has {image_id}")
        given = annotation["answers"]
        if not isinstance(given, list) or not given:
            raise PrepareError(f"{at}: field 'answers': expected a non-empty list, got {given!r}")
        counts = Counter()
        for j, answer in enumerate(given):
            if not isinstance(answer, dict) or not isinstance(answer.get("answer"), str):
                raise PrepareError(f"{at}: field 'answers'[{j}]: expected an object with a string 'answer', "
                                   f"got {answer!r}")
            normalised = normalize_answer(answer["answer"])
            if normalised:
                counts[normalised] += 1
        questions.append({"question_id": qid, "question": text, "image_id": image_id,
                          "question_type": annotation["question_type"].strip(),
                          "answer_type": annotation["answer_type"].strip(),
                          "answer": normalize_answer(annotation["multiple_choice_answer"]),
                          "answers": counts, "annotators": len(given),
                          "path": f"{folder}/{pattern.format(image_id)}", "where": where})
    return questions


def read_vqa_v2(raw: Path, limit: int | None, progress: bool) -> tuple[dict, dict]:
    names = [name for files in V2.values() for name in files[:2]]
    require(raw, names, "VQA v2")
    published = {split: read_v2_split(raw, split, limit, progress) for split in V2}
    return published, {n: (raw / n).stat().st_size for n in names}


def hold_out(questions: list[dict], fraction: float, source: str) -> tuple[list[dict], list[dict]]:
    """(train, valid): valid takes the last ``fraction`` of the images by sorted id, with all their questions."""
    ids = sorted({q["image_id"] for q in questions})
    if len(ids) < 2:
        raise PrepareError(f"{source}: {len(ids)} image(s) in the training split, too few to hold out "
                           f"validation images (raise --limit)")
    n_valid = min(max(math.floor(len(ids) * fraction + 0.5), 1), len(ids) - 1)
    valid_ids = set(ids[len(ids) - n_valid:])
    return ([q for q in questions if q["image_id"] not in valid_ids],
            [q for q in questions if q["image_id"] in valid_ids])


def load_image(path: Path, size: int, name: str) -> np.ndarray:
    """(size, size, 3) uint8 RGB, resized (bilinear) when needed."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            if image.format == "JPEG" and min(image.size) > 2 * size:
                image.draft("RGB", (size, size))  # DCT-domain reduction, never below the asked size
            image = image.convert("RGB")
            if image.size != (size, size):
                image = image.resize((size, size), Image.BILINEAR)
            return np.asarray(image, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        raise PrepareError(f"{name}: not a readable image ({e})") from None


def image_rows(questions: list[dict]) -> list[str]:
    """Set each question's ``image`` row; return the image paths, in order of first use."""
    rows, paths = {}, []
    for q in questions:
        if q["path"] not in rows:
            rows[q["path"]] = len(paths)
            paths.append(q["path"])
        q["image"] = rows[q["path"]]
    return paths


def _remove_new_folders(folders: list[Path]) -> None:
    for folder in folders:  # the deepest first; only the empty ones this run made
        try:
            folder.rmdir()
        except OSError:
            break


# ---------------------------------------------------------------------- the whole run


def prepare(raw: str | Path | None, out: str | Path, dataset: str = "auto", image_size: int = IMAGE_SIZE,
            valid_fraction: float = VALID_FRACTION, min_answer_count: int = MIN_ANSWER_COUNT,
            vocab_from: str = "train+val", limit: int | None = None, overwrite: bool = False,
            progress: bool = True) -> dict:
    """Read the VQA data set in ``raw`` (default: the installed easy-VQA), write the prepared folder
    ``out``; return its metadata."""
    out = Path(out)
    if dataset not in ("auto", *DATASETS):
        raise PrepareError(f"dataset (--dataset) must be one of auto, {', '.join(DATASETS)}, got {dataset!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < MIN_IMAGE_SIZE:
        raise PrepareError(f"image_size (--image-size) must be an integer of at least {MIN_IMAGE_SIZE}, got {image_size!r}")
    if not isinstance(valid_fraction, (int, float)) or not 0 < valid_fraction < 1:
        raise PrepareError(f"valid_fraction (--valid-fraction) must be in (0, 1), got {valid_fraction!r}")
    if isinstance(min_answer_count, bool) or not isinstance(min_answer_count, int) or min_answer_count < 1:
        raise PrepareError(f"min_answer_count (--min-answer-count) must be an integer of at least 1, "
                           f"got {min_answer_count!r}")
    if vocab_from not in VOCAB_FROM:
        raise PrepareError(f"vocab_from (--vocab-from) must be one of {', '.join(VOCAB_FROM)}, got {vocab_from!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise PrepareError(f"limit (--limit) must be a positive integer, got {limit!r}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise PrepareError(f"{out} already exists; pass --overwrite (overwrite=True) to replace it")
    if raw is None:
        raw = easy_vqa_dir()
        if raw is None:
            raise PrepareError("no --raw folder given and the easy-vqa package is not installed (pip install easy-vqa)")
    raw = Path(raw)
    if not raw.is_dir():
        raise PrepareError(f"{raw}: no such folder")
    if dataset == "auto":
        dataset = detect(raw)

    if dataset == "easy-vqa":
        published, vocabulary, sources = read_easy_vqa(raw, limit)
        train_part, test_part = published["train"], published["test"]
        train, valid = hold_out(train_part, valid_fraction, "train/questions.json")
        vocab_source, min_count = EASY_ANSWERS, None
        scores = "every question has one answer, which scores 1.0"
        images_from = "train/images/<image_id>.png, test/images/<image_id>.png"
        published_names = {"train": "easy-VQA train split (train/questions.json)",
                           "test": "easy-VQA test split (test/questions.json)"}
    else:
        published, sources = read_vqa_v2(raw, limit, progress)
        train_part, test_part = published["train2014"], published["val2014"]
        train, valid = hold_out(train_part, valid_fraction, V2["train2014"][0])
        counted = train if vocab_from == "train" else train_part + test_part
        frequency = Counter(q["answer"] for q in counted if q["answer"])
        vocabulary = [a for a, n in sorted(frequency.items(), key=lambda x: (-x[1], x[0])) if n >= min_answer_count]
        if not vocabulary:
            raise PrepareError(f"min_answer_count (--min-answer-count) {min_answer_count}: no answer is that frequent "
                               f"over {vocab_from}")
        positions = {a: i for i, a in enumerate(vocabulary)}
        for q in train_part + test_part:
            q["answers"] = soft_scores(q["answers"], q.pop("annotators"), positions)
        vocab_source, min_count = vocab_from, min_answer_count
        scores = ("VQA accuracy of each normalised vocabulary answer: the mean over the leave-one-annotator-out "
                  "subsets of min(1, matches / 3) (10 annotators: 1, 2, 3, 4+ matches score 0.3, 0.6, 0.9, 1.0)")
        images_from = "train2014/COCO_train2014_%012d.jpg, val2014/COCO_val2014_%012d.jpg"
        published_names = {"train": "VQA v2 train2014 split", "test": "VQA v2 val2014 split"}

    splits = {"train": train, "valid": valid, "test": test_part}
    paths = {split: image_rows(questions) for split, questions in splits.items()}
    for split, questions in splits.items():  # every image is there before anything is written
        for path in paths[split]:
            if not (raw / path).is_file():
                q = next(q for q in questions if q["path"] == path)
                raise PrepareError(f"{path}: no such image (needed by {q['where']}, question_id {q['question_id']})")

    percent = f"{valid_fraction:.0%}" if round(valid_fraction * 100, 9).is_integer() else f"{valid_fraction:g}"
    metadata = {
        "format_version": FORMAT_VERSION,
        "dataset": dataset,
        "answers": vocabulary,
        "answer_types": sorted({q["answer_type"] for qs in splits.values() for q in qs}),
        "counts": {s: {"questions": len(qs), "images": len(paths[s])} for s, qs in splits.items()},
        "image": {"size": image_size, "channels": f"RGB, uint8, (N, {image_size}, {image_size}, 3)",
                  "resize": "whole picture to a square, bilinear (PIL)"},
        "min_answer_count": min_count,
        "vocab_from": vocab_source,
        "valid_fraction": valid_fraction,
        "limit": limit,
        "source": {"files": sources, "images": images_from},
        "scores": scores,
        "splits": {
            "train": f"the published {published_names['train']} less its validation images",
            "valid": f"the last {percent} of the images of the published {published_names['train']}, by sorted "
                     f"image id, with all their questions (image-disjoint from train)",
            "test": f"the published {published_names['test']}",
        },
        "out_of_vocabulary": {s: (sum(not q["answers"] for q in qs) / len(qs) if qs else 0.0)
                              for s, qs in splits.items()},
    }

    new_folders = [p for p in [out.parent, *out.parent.parents] if not p.exists()]
    try:
        with atomic_path(out) as tmp:
            tmp.mkdir()
            for split, questions in splits.items():
                array = np.lib.format.open_memmap(tmp / f"{split}_images.npy", mode="w+", dtype=np.uint8,
                                                  shape=(len(paths[split]), image_size, image_size, 3))
                for row, path in enumerate(tqdm(paths[split], desc=f"{split} images", disable=not progress)):
                    array[row] = load_image(raw / path, image_size, path)
                array.flush()
                del array
                with open(tmp / f"{split}.jsonl", "w", encoding="utf-8") as f:
                    for q in questions:
                        f.write(json.dumps({
                            "question_id": q["question_id"], "question": q["question"], "image": q["image"],
                            "image_id": str(q["image_id"]), "question_type": q["question_type"],
                            "answer_type": q["answer_type"], "answer": q["answer"], "answers": q["answers"]}) + "\n")
            (tmp / "metadata.json").write_text(json.dumps(metadata, indent=2))
    except BaseException:
        _remove_new_folders(new_folders)
        raise
    return metadata


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw", type=Path, default=None,
                        help="folder of easy-VQA or VQA v2 (default: the installed easy-vqa package's data)")
    parser.add_argument("--out", required=True, type=Path, help="folder to write the prepared data to")
    parser.add_argument("--dataset", choices=("auto", *DATASETS), default="auto",
                        help="which layout --raw holds (default: detected from its files)")
    parser.add_argument("--image-size", type=int, default=IMAGE_SIZE,
                        help=f"side of the square images, pixels (default {IMAGE_SIZE})")
    parser.add_argument("--valid-fraction", type=float, default=VALID_FRACTION,
                        help=f"fraction of the training images held out for validation (default {VALID_FRACTION})")
    parser.add_argument("--min-answer-count", type=int, default=MIN_ANSWER_COUNT,
                        help=f"VQA v2: keep answers given as the multiple-choice answer at least this often "
                             f"(default {MIN_ANSWER_COUNT})")
    parser.add_argument("--vocab-from", choices=VOCAB_FROM, default="train+val",
                        help="VQA v2: count answers over train2014 + val2014 (default) or the training split only")
    parser.add_argument("--limit", type=int, default=None, help="only the first N questions of each published split")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    try:
        meta = prepare(args.raw, args.out, dataset=args.dataset, image_size=args.image_size,
                       valid_fraction=args.valid_fraction, min_answer_count=args.min_answer_count,
                       vocab_from=args.vocab_from, limit=args.limit, overwrite=args.overwrite,
                       progress=not args.no_progress)
    except PrepareError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{s} {c['questions']:,} questions / {c['images']:,} images" for s, c in meta["counts"].items())
    oov = ", ".join(f"{s} {f:.1%}" for s, f in meta["out_of_vocabulary"].items())
    print(f"wrote {args.out} ({meta['dataset']}): {counts}; {len(meta['answers']):,} answers; "
          f"{meta['image']['size']} x {meta['image']['size']} images; no scored answer: {oov}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
