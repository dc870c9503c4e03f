#!/usr/bin/env python
"""Build a visual-question-answering data set for I2M2: questions, soft answer scores and images.

Three inputs, told apart by the files in ``--raw`` (or forced with ``--dataset``):

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

* VQA-VS (github.com/PhoebusSi/VQA-VS), VQA v2's questions re-split to test shortcut
  learning, as downloaded and unpacked: ``Training/Training-{Ques,Ans}.json``,
  ``Val/Val-{Ques,Ans}.json``, ``IID-Test/IID-Test-{Ques,Ans}.json`` (JSON lists: questions
  ``{question_id, image_id, question}``, annotations as VQA v2's, ``question_type``
  optional) and, when supplied, the nine out-of-distribution test sets
  ``OOD-Test/<S>/OOD-Test-<S>-Ques.json`` for S in QT, KW, KWP, QT+KW, KO, KOP, QT+KO, KW+KO,
  QT+KW+KO (question-type, keyword and key-object shortcuts and their combinations). Each OOD
  set is a subset of the IID test set: a test question is written once, with the OOD sets
  that hold it (``ood``). The pictures are COCO's, from train2014 or val2014 (looked up in
  both, under ``--images``). Answers are normalised and scored as for VQA v2; the vocabulary
  is counted over the training split by default (``--vocab-from train``, as the benchmark's
  own preprocessing does).

``--images DIR`` is the folder holding the pictures (``train2014/``, ``val2014/``; default
``--raw``).

Splits: ``train`` is the published training split less its validation part; ``valid`` is
the last ``--valid-fraction`` (default 0.1) of the training split's images, by sorted image
id, with all their questions (image-disjoint from train, deterministic); ``test`` is
easy-VQA's test split / VQA v2's val2014. VQA-VS has its own: Training, Val, IID-Test
(``--valid-fraction`` unused). ``--limit N`` keeps the first N questions of each published
split (quick runs; OOD questions beyond it are left out).

Any malformed JSON, missing field, unknown answer, question without its annotation, or
missing or unreadable image stops the run with one line naming the file, the entry and the
field; nothing is written then. So does, before any file is read, an ``--out`` that cannot be
written (its folder unwritable, a mount point, a symbolic link loop) and, before any image is
read, a disk without room for the output (its image arrays' size is known from the questions);
the image arrays' blocks are allocated before they are filled, so that a disk filled meanwhile
stops the run with one line naming the file (and no temporary folder left), not a bus error.

Output (``--out``, a folder written atomically; an existing one only with ``--overwrite``):
  train.jsonl, valid.jsonl, test.jsonl  one question a line: question_id, question, image (row
                                        in the split's image array), image_id, question_type,
                                        answer_type, answer (normalised, kept even when outside
                                        the vocabulary), answers ({answer: score > 0}, vocabulary
                                        answers only; may be empty); VQA-VS test: ood (the
                                        out-of-distribution sets holding the question)
  train_images.npy, ...                 (n_images, S, S, 3) uint8, one row per distinct image
                                        of the split, in order of first use
  metadata.json                         vocabulary (position = column), counts, parameters,
                                        sources, out-of-vocabulary fractions

    python data_scripts/prepare_vqa.py --out data/vqa                       # easy-VQA, installed
    python data_scripts/prepare_vqa.py --raw ~/vqa2 --out data/vqa2 --image-size 64
    python data_scripts/prepare_vqa.py --raw ~/VQA-VS --images ~/coco --out data/vqa-vs
"""

from __future__ import annotations

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

from i2m2kit.io import (PrepareError, allocated_memmap, as_prepare_error, atomic_path, check_free_space,
                        check_input, check_output, package_folder, prepare_output, script_main, script_parser)

FORMAT_VERSION = 1
OUTPUTS = ("metadata.json", "*.jsonl", "*_images.npy")  # all --overwrite may replace
DATASETS = ("easy-vqa", "vqa-v2", "vqa-vs")
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
COCO = [(folder, pattern) for _, _, folder, pattern in V2.values()]  # where a COCO picture may be

# VQA-VS: our split -> its files (+ "-Ques.json", "-Ans.json"); its out-of-distribution test sets
VS = {"train": "Training/Training", "valid": "Val/Val", "test": "IID-Test/IID-Test"}
VS_OOD = ("QT", "KW", "KWP", "QT+KW", "KO", "KOP", "QT+KO", "KW+KO", "QT+KW+KO")


def vs_ood_file(name: str) -> str:
    return f"OOD-Test/{name}/OOD-Test-{name}-Ques.json"


NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"))}
ARTICLES = frozenset(("a", "an", "the"))
PUNCTUATION = re.compile(r"(?!(?<=\d)[.,]\d)(?:[^\w\s]|_)")  # all but the . or , of 1.5, 1,000


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
    if (raw / f"{VS['train']}-Ques.json").is_file():
        return "vqa-vs"
    v2 = ", ".join(name for files in V2.values() for name in files[:2])
    raise PrepareError(f"{raw}: no layout recognised: expected {EASY_ANSWERS} and train/questions.json "
                       f"(easy-VQA), {v2} (VQA v2) or {VS['train']}-Ques.json (VQA-VS)")


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


def join_annotations(questions: list, qsource: tuple[str, str], annotations: list, asource: tuple[str, str],
                     limit: int | None, progress: bool, image_path, desc: str) -> list[dict]:
    """VQA v2-style questions (the first ``limit``) joined with their annotations; ``answers``
    holds the normalised annotators' answers (a Counter) and ``annotators`` their number, for
    now. ``qsource``/``asource``: (file, key of the list in it, "" for a file that is the list),
    for messages; ``image_path(image_id)`` is the picture's path under the images folder."""
    qwhere, awhere = (" ".join(filter(None, source)) for source in (qsource, asource))
    aname = asource[0]
    index = {}
    for i, annotation in enumerate(annotations):
        where = f"{awhere}[{i}]"
        if not isinstance(annotation, dict):
            raise PrepareError(f"{where}: expected an object, got {type(annotation).__name__}")
        if "question_id" not in annotation:
            raise PrepareError(f"{where}: no field 'question_id'")
        qid = str(annotation["question_id"])
        if qid in index:
            raise PrepareError(f"{where}: question_id {qid} annotated twice (also {awhere}[{index[qid][0]}])")
        index[qid] = (i, annotation)

    joined = []
    for i, entry in enumerate(tqdm(questions[:limit], desc=desc, disable=not progress, mininterval=1)):
        where = f"{qwhere}[{i}]"
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
        at = f"{awhere}[{a}] (question_id {qid})"
        for key in ("answer_type", "multiple_choice_answer", "answers"):
            if key not in annotation:
                raise PrepareError(f"{at}: no field {key!r}")
        for key in ("question_type", "answer_type", "multiple_choice_answer"):
            if key in annotation and not isinstance(annotation[key], str):
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
        joined.append({"question_id": qid, "question": text, "image_id": image_id,
                       "question_type": annotation.get("question_type", "unknown").strip(),
                       "answer_type": annotation["answer_type"].strip(),
                       "answer": normalize_answer(annotation["multiple_choice_answer"]),
                       "answers": counts, "annotators": len(given),
                       "path": image_path(image_id), "where": where})
    return joined


def read_vqa_v2(raw: Path, limit: int | None, progress: bool) -> tuple[dict, dict]:
    """{published split: [question]} and the source files."""
    names = [name for files in V2.values() for name in files[:2]]
    require(raw, names, "VQA v2")
    published = {}
    for split, (qname, aname, folder, pattern) in V2.items():
        qdata, adata = read_json(raw / qname, raw), read_json(raw / aname, raw)
        for name, data, key in ((qname, qdata, "questions"), (aname, adata, "annotations")):
            if not isinstance(data, dict) or not isinstance(data.get(key), list):
                raise PrepareError(f"{name}: expected a JSON object with a {key!r} list")
        published[split] = join_annotations(qdata["questions"], (qname, "questions"), adata["annotations"],
                                             (aname, "annotations"), limit, progress,
                                             lambda i, f=folder, p=pattern: f"{f}/{p.format(i)}", f"{split} questions")
    return published, {n: (raw / n).stat().st_size for n in names}


def read_vqa_vs(raw: Path, images: Path, limit: int | None, progress: bool) -> tuple[dict, dict, dict]:
    """{our split: [question]}, the source files, and {OOD set: questions} (test questions get
    ``ood``, the out-of-distribution sets holding them)."""
    names = [f"{prefix}-{kind}.json" for prefix in VS.values() for kind in ("Ques", "Ans")]
    require(raw, names, "VQA-VS")

    @functools.lru_cache(maxsize=None)
    def coco_path(image_id: int) -> str:
        candidates = [f"{folder}/{pattern.format(image_id)}" for folder, pattern in COCO]
        return next((c for c in candidates if (images / c).is_file()), " or ".join(candidates))

    published = {}
    for split, prefix in VS.items():
        lists = {}
        for kind in ("Ques", "Ans"):
            name = f"{prefix}-{kind}.json"
            lists[kind] = read_json(raw / name, raw)
            if not isinstance(lists[kind], list):
                raise PrepareError(f"{name}: expected a JSON list of objects, got {type(lists[kind]).__name__}")
        published[split] = join_annotations(lists["Ques"], (f"{prefix}-Ques.json", ""), lists["Ans"],
                                            (f"{prefix}-Ans.json", ""), limit, progress, coco_path, f"{split} questions")
    test = {q["question_id"]: q for q in published["test"]}
    for q in test.values():
        q["ood"] = []
    ood = {}
    for name in VS_OOD:
        file = vs_ood_file(name)
        if not (raw / file).is_file():
            continue
        entries = read_json(raw / file, raw)
        if not isinstance(entries, list):
            raise PrepareError(f"{file}: expected a JSON list of objects, got {type(entries).__name__}")
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or "question_id" not in entry:
                raise PrepareError(f"{file}[{i}]: no field 'question_id'")
            q = test.get(str(entry["question_id"]))
            if q is not None:
                q["ood"].append(name)
                ood[name] = ood.get(name, 0) + 1
            elif limit is None:  # with --limit, the OOD questions beyond it are left out
                raise PrepareError(f"{file}[{i}]: question_id {entry['question_id']} is not in the IID test set "
                                   f"({VS['test']}-Ques.json)")
        ood.setdefault(name, 0)  # a supplied set, even if a --limit build holds none of it
        names.append(file)
    return published, {n: (raw / n).stat().st_size for n in names}, ood


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
            vocab_from: str | None = None, limit: int | None = None, overwrite: bool = False,
            progress: bool = True, images: str | Path | None = None) -> dict:
    """Read the VQA data set in ``raw`` (default: the installed easy-VQA; pictures under ``images``,
    default ``raw``), write the prepared folder ``out``; return its metadata. ``vocab_from``
    None: "train" for VQA-VS (its own preprocessing), "train+val" for VQA v2."""
    for option, value in (("raw", raw), ("images", images), ("out", out)):
        if value is not None and not str(value).strip():  # Path("") would be the working folder
            raise PrepareError(f"{option} (--{option}): an empty path; name a folder")
    out = Path(out)
    if dataset not in ("auto", *DATASETS):
        raise PrepareError(f"dataset (--dataset) must be one of auto, {', '.join(DATASETS)}, got {dataset!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < MIN_IMAGE_SIZE:
        raise PrepareError(f"image_size (--image-size) must be an integer of at least {MIN_IMAGE_SIZE}, got {image_size!r}")
    if not isinstance(valid_fraction, (int, float)) or not 0 < valid_fraction < 1:  # NaN too
        raise PrepareError(f"valid_fraction (--valid-fraction) must be in (0, 1), got {valid_fraction!r}")
    if isinstance(min_answer_count, bool) or not isinstance(min_answer_count, int) or min_answer_count < 1:
        raise PrepareError(f"min_answer_count (--min-answer-count) must be an integer of at least 1, "
                           f"got {min_answer_count!r}")
    if vocab_from not in (None, *VOCAB_FROM):
        raise PrepareError(f"vocab_from (--vocab-from) must be one of {', '.join(VOCAB_FROM)}, got {vocab_from!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise PrepareError(f"limit (--limit) must be a positive integer, got {limit!r}")
    if raw is None:
        raw = easy_vqa_dir()
        if raw is None:
            raise PrepareError("no --raw folder given and the easy-vqa package is not installed (pip install easy-vqa)")
    raw = Path(raw)
    images = Path(images) if images is not None else raw
    for folder, option in ((raw, "--raw"), (images, "--images")):
        check_input(folder, option)  # a symbolic link loop: said as such, not as "no such folder"
        if not folder.is_dir():
            raise PrepareError(f"{folder}: {'not a folder' if folder.exists() else 'no such folder'} ({option})")
    with as_prepare_error():  # an unwritable, mounted or looping --out is said now, not after every file is read
        prepare_output(out)
    check_output(out, overwrite, [raw, images], OUTPUTS)
    if dataset == "auto":
        dataset = detect(raw)
    vocab_from = vocab_from or ("train" if dataset == "vqa-vs" else "train+val")
    ood = {}

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
        if dataset == "vqa-v2":
            published, sources = read_vqa_v2(raw, limit, progress)
            train_part, test_part = published["train2014"], published["val2014"]
            train, valid = hold_out(train_part, valid_fraction, V2["train2014"][0])
            train_and_val = train_part + test_part  # VQA v2's "train+val": train2014 + val2014
            images_from = "train2014/COCO_train2014_%012d.jpg, val2014/COCO_val2014_%012d.jpg"
            published_names = {"train": "VQA v2 train2014 split", "test": "VQA v2 val2014 split"}
        else:
            published, sources, ood = read_vqa_vs(raw, images, limit, progress)
            train, valid, test_part = published["train"], published["valid"], published["test"]
            train_and_val = train + valid
            images_from = "COCO: train2014/COCO_train2014_%012d.jpg or val2014/COCO_val2014_%012d.jpg"
        counted = train if vocab_from == "train" else train_and_val
        frequency = Counter(q["answer"] for q in counted if q["answer"])
        vocabulary = [a for a, n in sorted(frequency.items(), key=lambda x: (-x[1], x[0])) if n >= min_answer_count]
        if not vocabulary:
            raise PrepareError(f"min_answer_count (--min-answer-count) {min_answer_count}: no answer is that frequent "
                               f"over {vocab_from}")
        positions = {a: i for i, a in enumerate(vocabulary)}
        for q in train + valid + test_part:
            q["answers"] = soft_scores(q["answers"], q.pop("annotators"), positions)
        vocab_source, min_count = vocab_from, min_answer_count
        scores = ("VQA accuracy of each normalised vocabulary answer: the mean over the leave-one-annotator-out "
                  "subsets of min(1, matches / 3) (10 annotators: 1, 2, 3, 4+ matches score 0.3, 0.6, 0.9, 1.0)")

    splits = {"train": train, "valid": valid, "test": test_part}
    paths = {split: image_rows(questions) for split, questions in splits.items()}
    for split, questions in splits.items():  # every image is there before anything is written
        for path in paths[split]:
            if not (images / path).is_file():
                q = next(q for q in questions if q["path"] == path)
                raise PrepareError(f"{path}: no such image (needed by {q['where']}, question_id {q['question_id']})")

    percent = f"{valid_fraction:.0%}" if round(valid_fraction * 100, 9).is_integer() else f"{valid_fraction:g}"
    if dataset == "vqa-vs":
        valid_fraction = None
        split_text = {s: f"the published VQA-VS {prefix.split('/')[0]} split ({prefix}-Ques.json)"
                      for s, prefix in VS.items()}
    else:
        split_text = {
            "train": f"the published {published_names['train']} less its validation images",
            "valid": f"the last {percent} of the images of the published {published_names['train']}, by sorted "
                     f"image id, with all their questions (image-disjoint from train)",
            "test": f"the published {published_names['test']}",
        }
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
        "splits": split_text,
        "ood_sets": ood,  # VQA-VS: {out-of-distribution test set: questions}, subsets of the test split
        "out_of_vocabulary": {s: (sum(not q["answers"] for q in qs) / len(qs) if qs else 0.0)
                              for s, qs in splits.items()},
    }

    # room for the output, said before any image is read: the arrays' size is known, and a JSON line
    # of a question takes well under 512 bytes
    n_images, n_questions = sum(map(len, paths.values())), sum(map(len, splits.values()))
    with as_prepare_error():
        check_free_space(out.parent, n_images * image_size ** 2 * 3 + 512 * n_questions,
                         f"{n_images:,} images of {image_size} x {image_size} and {n_questions:,} questions")

    new_folders = [p for p in [out.parent, *out.parent.parents] if not p.exists()]
    name = None  # the file being written, named if the disk fills
    try:
        with atomic_path(out) as tmp:
            tmp.mkdir()
            for split, questions in splits.items():
                name = f"{split}_images.npy"
                array = allocated_memmap(tmp / name, np.uint8, (len(paths[split]), image_size, image_size, 3))
                for row, path in enumerate(tqdm(paths[split], desc=f"{split} images", disable=not progress)):
                    array[row] = load_image(images / path, image_size, path)
                array.flush()
                del array
                name = f"{split}.jsonl"
                with open(tmp / name, "w", encoding="utf-8") as f:
                    for q in questions:
                        f.write(json.dumps({
                            "question_id": q["question_id"], "question": q["question"], "image": q["image"],
                            "image_id": str(q["image_id"]), "question_type": q["question_type"],
                            "answer_type": q["answer_type"], "answer": q["answer"], "answers": q["answers"],
                            **({"ood": q["ood"]} if "ood" in q else {})}) + "\n")
            name = "metadata.json"
            (tmp / name).write_text(json.dumps(metadata, indent=2))
            name = None  # what fails now is the rename to --out
    except OSError as e:  # a full disk while writing: one line, the temporary folder removed by atomic_path
        _remove_new_folders(new_folders)
        raise PrepareError(f"{out / name if name else out}: cannot be written ({e.strerror or e})") from None
    except BaseException:
        _remove_new_folders(new_folders)
        raise
    return metadata


@script_main
def main(argv: Sequence[str] | None = None) -> int:
    parser = script_parser(__doc__, "folder to write the prepared data to")
    # paths kept as given: Path("") would silently be the working folder
    parser.add_argument("--raw", default=None,
                        help="folder of easy-VQA, VQA v2 or VQA-VS (default: the installed easy-vqa package's data)")
    parser.add_argument("--images", default=None,
                        help="folder of the pictures (VQA v2, VQA-VS: holding train2014/ and val2014/; default --raw)")
    parser.add_argument("--dataset", choices=("auto", *DATASETS), default="auto",
                        help="which layout --raw holds (default: detected from its files)")
    parser.add_argument("--image-size", type=int, default=IMAGE_SIZE,
                        help=f"side of the square images, pixels (default {IMAGE_SIZE})")
    parser.add_argument("--valid-fraction", type=float, default=VALID_FRACTION,
                        help=f"fraction of the training images held out for validation (default {VALID_FRACTION})")
    parser.add_argument("--min-answer-count", type=int, default=MIN_ANSWER_COUNT,
                        help=f"VQA v2: keep answers given as the multiple-choice answer at least this often "
                             f"(default {MIN_ANSWER_COUNT})")
    parser.add_argument("--vocab-from", choices=VOCAB_FROM, default=None,
                        help="count answers over the training and validation splits (VQA v2: train2014 + val2014; "
                             "its default) or the training split only (VQA-VS's default)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N questions of each published split")
    args = parser.parse_args(argv)
    meta = prepare(args.raw, args.out, dataset=args.dataset, image_size=args.image_size,
                   valid_fraction=args.valid_fraction, min_answer_count=args.min_answer_count,
                   vocab_from=args.vocab_from, limit=args.limit, overwrite=args.overwrite,
                   progress=not args.no_progress, images=args.images)
    counts = ", ".join(f"{s} {c['questions']:,} questions / {c['images']:,} images" for s, c in meta["counts"].items())
    oov = ", ".join(f"{s} {f:.1%}" for s, f in meta["out_of_vocabulary"].items())
    ood = (f"; out-of-distribution test sets: {', '.join(f'{s} {n:,}' for s, n in meta['ood_sets'].items())}"
           if meta["ood_sets"] else "")
    print(f"wrote {args.out} ({meta['dataset']}): {counts}; {len(meta['answers']):,} answers; "
          f"{meta['image']['size']} x {meta['image']['size']} images; no scored answer: {oov}{ood}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
