"""data_scripts/prepare_vqa.py: easy-VQA from the installed package, a VQA v2 miniature in the
published layout (normalisation, vocabulary, soft scores, resizing, splits), and one-line
errors for bad input that leave nothing behind."""

from __future__ import annotations

import json
import re
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from faults import bad_output_location, disk_full, run_script, script_fixture, small_tmpfs
from PIL import Image

SPLITS = ("train", "valid", "test")
ROOT = Path(__file__).resolve().parents[1]


prep = script_fixture("prepare_vqa")


@pytest.fixture(scope="module")
def easy_raw(prep) -> Path:
    folder = prep.easy_vqa_dir()
    if folder is None:
        if os.environ.get("CI"):
            pytest.fail("the easy-vqa package is not installed; the easy-VQA tests must run in CI")
        pytest.skip("the easy-vqa package is not installed")
    return folder


@pytest.fixture(scope="module")
def easy(prep, easy_raw, tmp_path_factory):
    """The whole of easy-VQA, built once (``raw`` left out: the installed package is the default)."""
    out = tmp_path_factory.mktemp("easy") / "prepared"
    meta = prep.prepare(None, out, progress=False)
    return out, meta


@pytest.fixture(scope="module")
def easy_lines(easy) -> dict:
    """The prepared questions of each split, read once."""
    return {s: lines(easy[0] / f"{s}.jsonl") for s in SPLITS}


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def published_questions(easy_raw: Path, split: str) -> list:
    return json.loads((easy_raw / split / "questions.json").read_text())


# ---------------------------------------------------------------------- easy-VQA, the real package


def test_easy_vqa_counts_and_vocabulary(easy, easy_lines, easy_raw):
    out, meta = easy
    counts = meta["counts"]
    assert counts["train"]["questions"] + counts["valid"]["questions"] == 38575
    assert counts["test"] == {"questions": 9673, "images": 1000}
    assert counts["train"]["images"] + counts["valid"]["images"] == 4000
    assert meta["dataset"] == "easy-vqa" and meta["format_version"] == 1
    assert meta["answers"] == [a.strip() for a in (easy_raw / "answers.txt").read_text().splitlines() if a.strip()]
    assert len(meta["answers"]) == 13
    for split in SPLITS:
        assert len(easy_lines[split]) == counts[split]["questions"]


def test_easy_vqa_questions_keep_their_source_order_and_single_answer(easy, easy_lines, easy_raw):
    meta, prepared = easy[1], easy_lines
    for split, sources in (("test", ["test"]), ("train", ["train", "valid"])):
        source = published_questions(easy_raw, split)
        got = sorted((q for s in sources for q in prepared[s]), key=lambda q: int(q["question_id"].split("-")[1]))
        assert [q["question_id"] for q in got] == [f"{split}-{i}" for i in range(len(source))]
        assert [(q["question"], q["answer"], int(q["image_id"])) for q in got] == [tuple(x) for x in source]
    for split in SPLITS:
        for q in prepared[split]:
            assert list(q) == ["question_id", "question", "image", "image_id", "question_type", "answer_type",
                               "answer", "answers"]
            assert q["answers"] == {q["answer"]: 1.0}
            assert q["answer"] in meta["answers"]
    assert all(v == 0.0 for v in meta["out_of_vocabulary"].values())


def test_easy_vqa_images_are_the_pngs(easy, easy_lines, easy_raw):
    out, _ = easy
    for split in SPLITS:
        questions = easy_lines[split]
        images = np.load(out / f"{split}_images.npy")
        assert images.dtype == np.uint8 and images.shape[1:] == (64, 64, 3)
        rows, ids = {}, {}
        for q in questions:  # rows in order of first use, one per image
            assert rows.setdefault(q["image_id"], len(rows)) == q["image"]
            ids[q["image"]] = q["image_id"]
        assert images.shape[0] == len(rows)
        folder = easy_raw / ("test" if split == "test" else "train") / "images"
        for q in questions[:: max(1, len(questions) // 7)] + questions[-1:]:
            png = np.asarray(Image.open(folder / f"{q['image_id']}.png").convert("RGB"))
            np.testing.assert_array_equal(images[q["image"]], png)


def test_easy_vqa_valid_split_holds_the_last_tenth_of_the_training_images(easy, easy_lines):
    meta = easy[1]
    train_ids = {int(q["image_id"]) for q in easy_lines["train"]}
    valid_ids = {int(q["image_id"]) for q in easy_lines["valid"]}
    assert not train_ids & valid_ids
    assert len(valid_ids) == 400 and len(train_ids) == 3600
    assert min(valid_ids) > max(train_ids)  # the last images by sorted id
    assert meta["counts"]["valid"]["images"] == 400 and meta["valid_fraction"] == 0.1


def test_easy_vqa_question_and_answer_types(easy, easy_lines):
    meta = easy[1]
    questions = [q for s in SPLITS for q in easy_lines[s]]
    templates = {q["question_type"] for q in questions}
    assert len(templates) == 24
    assert "is there a <color> shape in the image?" in templates and "what color is the <shape>?" in templates
    assert "what shape is in the image?" in templates  # "shape" itself is no shape word
    assert meta["answer_types"] == ["color", "shape", "yes/no"]
    for q in questions:
        expected = ("yes/no" if q["answer"] in ("yes", "no")
                    else "shape" if q["answer"] in ("circle", "rectangle", "triangle") else "color")
        assert q["answer_type"] == expected


def test_easy_vqa_metadata_is_written(easy):
    out, meta = easy
    assert json.loads((out / "metadata.json").read_text()) == meta
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["metadata.json", *(f"{s}.jsonl" for s in SPLITS), *(f"{s}_images.npy" for s in SPLITS)])
    assert meta["image"]["size"] == 64 and meta["limit"] is None and meta["vocab_from"] == "answers.txt"
    assert set(meta["source"]["files"]) == {"answers.txt", "train/questions.json", "test/questions.json"}
    assert set(meta["splits"]) == set(SPLITS) and isinstance(meta["scores"], str)


def test_easy_vqa_limit_and_resize(prep, easy_raw, tmp_path):
    meta = prep.prepare(easy_raw, tmp_path / "out", image_size=32, limit=60, progress=False)
    assert meta["counts"]["train"]["questions"] + meta["counts"]["valid"]["questions"] == 60
    assert meta["counts"]["test"]["questions"] == 60 and meta["limit"] == 60
    q = lines(tmp_path / "out" / "test.jsonl")[-1]
    images = np.load(tmp_path / "out" / "test_images.npy")
    assert images.shape == (meta["counts"]["test"]["images"], 32, 32, 3)
    png = Image.open(easy_raw / "test" / "images" / f"{q['image_id']}.png").convert("RGB")
    np.testing.assert_array_equal(images[q["image"]], np.asarray(png.resize((32, 32), Image.BILINEAR)))


def test_command_line_builds_the_installed_easy_vqa_by_default(prep, easy_raw, tmp_path, capsys):
    out = tmp_path / "vqa"
    assert prep.main(["--out", str(out), "--limit", "100", "--no-progress"]) == 0
    printed = capsys.readouterr()
    assert printed.err == ""
    assert printed.out.count("\n") == 1 and printed.out.startswith(f"wrote {out} (easy-vqa): train ")
    assert "13 answers" in printed.out
    assert json.loads((out / "metadata.json").read_text())["dataset"] == "easy-vqa"
    # again: refused with one line on stderr and status 2, then replaced on request
    assert prep.main(["--out", str(out), "--limit", "100", "--no-progress"]) == 2
    printed = capsys.readouterr()
    assert printed.out == "" and printed.err.count("\n") == 1
    assert printed.err.startswith(f"error: {out} already exists; pass --overwrite")
    assert prep.main(["--raw", str(easy_raw), "--out", str(out), "--limit", "50", "--overwrite", "--no-progress"]) == 0
    assert json.loads((out / "metadata.json").read_text())["limit"] == 50


# ---------------------------------------------------------------------- VQA v2, a miniature

V2_TRAIN = [  # question_id, image_id, question, multiple_choice_answer, the 10 annotators' answers
    (11, 30, "How many dogs are there?", "Two", ["Two", "two", "2", "2 ", "3", "three", "Three", "cat", "Cat", "dog."]),
    (12, 30, "What animal is this?", "the dog.", ["the dog.", "dog", "Dog", "a dog", "dog!", "The Dog", "dog", "dog",
                                                  "dog", "DOG"]),
    (13, 7, "What animal is that?", "Cat", ["cat", "cat", "Cat", "dog", "horse", "horse", "horse", "horse", "horse",
                                            "horse"]),
    (14, 12, "Is it sunny?", "yes!", ["yes!"] * 10),
    (15, 45, "Is it raining?", "No", ["no"] * 9 + ["yes"]),
    (16, 9, "How many cats?", "three", ["3", "3"] + ["2"] * 8),
    (17, 51, "What is it?", "kite", ["kite"] * 10),
    (18, 7, "What is on the sofa?", "A cat", ["cat"] * 10),
]
V2_VAL = [
    (21, 101, "Is there a dog?", "Yes", ["yes"] * 10),
    (22, 102, "How many?", "2", ["2"] * 5 + ["1"] * 5),
    (23, 102, "What animal?", "Dog", ["dog"] * 10),
    (24, 101, "What colour is it?", "Blue", ["blue"] * 10),
]
# with min_answer_count=2 (multiple-choice answers 2, cat, dog, yes seen twice) and valid_fraction=0.34
# (the last 2 of the 6 training images by id: 45 and 51)
V2_EXPECTED = {
    "train": {"11": {"2": 1.0, "cat": 0.6, "dog": 0.3}, "12": {"dog": 1.0}, "13": {"cat": 0.9, "dog": 0.3},
              "14": {"yes": 1.0}, "16": {"2": 1.0}, "18": {"cat": 1.0}},
    "valid": {"15": {"yes": 0.3}, "17": {}},
    "test": {"21": {"yes": 1.0}, "22": {"2": 1.0}, "23": {"dog": 1.0}, "24": {}},
}


def colour(image_id: int) -> tuple[int, int, int]:
    return (image_id * 37) % 256, (image_id * 91) % 256, (image_id * 53) % 256


def make_v2(root: Path) -> Path:
    """A VQA v2 folder in the published layout: questions, annotations (in another order), JPEGs."""
    for split, rows in (("train2014", V2_TRAIN), ("val2014", V2_VAL)):
        (root / split).mkdir(parents=True)
        questions = [{"image_id": i, "question": q, "question_id": qid} for qid, i, q, _, _ in rows]
        annotations = [{"question_id": qid, "image_id": i, "question_type": " ".join(q.lower().split()[:2]),
                        "answer_type": "yes/no" if mc.lower().strip("!") in ("yes", "no") else "other",
                        "multiple_choice_answer": mc,
                        "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": k + 1}
                                    for k, a in enumerate(answers)]}
                       for qid, i, q, mc, answers in reversed(rows)]
        (root / f"v2_OpenEnded_mscoco_{split}_questions.json").write_text(json.dumps(
            {"info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "data_subtype": split,
             "questions": questions}))
        (root / f"v2_mscoco_{split}_annotations.json").write_text(json.dumps(
            {"info": {}, "data_type": "mscoco", "data_subtype": split, "annotations": annotations}))
        for image_id in {r[1] for r in rows}:
            size = (200, 150) if image_id == 30 else (24 + image_id % 17, 20 + image_id % 13)
            Image.new("RGB", size, colour(image_id)).save(root / split / f"COCO_{split}_{image_id:012d}.jpg",
                                                          quality=95)
    return root


@pytest.fixture
def v2(prep, tmp_path):
    raw = make_v2(tmp_path / "raw")
    out = tmp_path / "out"
    meta = prep.prepare(raw, out, image_size=16, valid_fraction=0.34, min_answer_count=2, progress=False)
    return raw, out, meta


@pytest.mark.parametrize("given, expected", [
    ("Two", "2"), ("the dog.", "dog"), ("yes!", "yes"), ("Yes ", "yes"), ("An  Apple", "apple"), ("1.5", "1.5"),
    ("1,000", "1,000"), ("t-shirt", "t shirt"), ("don't", "dont"), ("ten dollars", "10 dollars"), ("3.", "3"),
    ("red, white", "red white"), ("?", ""),
])
def test_answers_are_normalised(prep, given, expected):
    assert prep.normalize_answer(given) == expected


def test_vqa_accuracy_of_1_to_4_matches_among_10_annotators(prep):
    assert [prep.vqa_score(m, 10) for m in range(1, 7)] == [0.3, 0.6, 0.9, 1.0, 1.0, 1.0]


def test_v2_vocabulary_scores_and_answers(v2):
    raw, out, meta = v2
    assert meta["dataset"] == "vqa-v2"
    assert meta["answers"] == ["2", "cat", "dog", "yes"]  # seen at least twice, most frequent first
    assert meta["min_answer_count"] == 2 and meta["vocab_from"] == "train+val"
    for split in SPLITS:
        prepared = lines(out / f"{split}.jsonl")
        assert {q["question_id"]: q["answers"] for q in prepared} == V2_EXPECTED[split]
    answers = {q["question_id"]: q["answer"] for s in SPLITS for q in lines(out / f"{s}.jsonl")}
    assert answers == {"11": "2", "12": "dog", "13": "cat", "14": "yes", "15": "no", "16": "3", "17": "kite",
                       "18": "cat", "21": "yes", "22": "2", "23": "dog", "24": "blue"}
    assert meta["out_of_vocabulary"] == {"train": 0.0, "valid": 0.5, "test": 0.25}
    q = lines(out / "train.jsonl")[0]
    assert q["question"] == "How many dogs are there?" and q["question_type"] == "how many"
    assert meta["answer_types"] == ["other", "yes/no"]


def test_v2_splits_are_image_disjoint_and_images_resized(v2):
    raw, out, meta = v2
    assert meta["counts"] == {"train": {"questions": 6, "images": 4}, "valid": {"questions": 2, "images": 2},
                              "test": {"questions": 4, "images": 2}}
    image_ids = {s: [q["image_id"] for q in lines(out / f"{s}.jsonl")] for s in SPLITS}
    assert image_ids["valid"] == ["45", "51"] and not set(image_ids["train"]) & set(image_ids["valid"])
    for split, folder in (("train", "train2014"), ("valid", "train2014"), ("test", "val2014")):
        images = np.load(out / f"{split}_images.npy")
        assert images.dtype == np.uint8 and images.shape == (meta["counts"][split]["images"], 16, 16, 3)
        for q in lines(out / f"{split}.jsonl"):
            image = images[q["image"]]
            assert np.abs(image.reshape(-1, 3).mean(0) - colour(int(q["image_id"]))).max() < 4
            if q["image_id"] != "30":  # small pictures: exactly PIL's bilinear resize
                jpeg = Image.open(raw / folder / f"COCO_{folder}_{int(q['image_id']):012d}.jpg").convert("RGB")
                np.testing.assert_array_equal(image, np.asarray(jpeg.resize((16, 16), Image.BILINEAR)))
    assert [q["image"] for q in lines(out / "train.jsonl")] == [0, 0, 1, 2, 3, 1]  # order of first use


def test_v2_vocabulary_from_the_training_split_only(prep, tmp_path):
    raw = make_v2(tmp_path / "raw")
    meta = prep.prepare(raw, tmp_path / "out", image_size=8, valid_fraction=0.34, min_answer_count=1,
                        vocab_from="train", progress=False)
    assert meta["answers"] == ["cat", "2", "3", "dog", "yes"]  # train split: 11, 12, 13, 14, 16, 18
    assert meta["min_answer_count"] == 1 and meta["vocab_from"] == "train"
    assert {q["question_id"]: q["answers"] for q in lines(tmp_path / "out" / "train.jsonl")}["16"] == {"2": 1.0,
                                                                                                         "3": 0.6}


# ---------------------------------------------------------------------- VQA-VS, a miniature

VS_SPLITS = {"Training/Training": V2_TRAIN[:6], "Val/Val": V2_TRAIN[6:],  # 17, 18: Val
             "IID-Test/IID-Test": V2_VAL + [(25, 7, "What animal is here?", "cat", ["cat"] * 10)]}  # 7: a train2014 picture
VS_OOD = {"QT": [21, 22], "KO": [24], "KW+KO": [22]}  # OOD sets are subsets of IID-Test


def make_vs(root: Path, coco: Path) -> tuple[Path, Path]:
    """A VQA-VS folder in the published layout (JSON lists; ``question_type`` left out of one
    annotation), its OOD question files, and a COCO folder with the pictures (``make_v2``'s)."""
    make_v2(coco)
    for prefix, rows in VS_SPLITS.items():
        (root / prefix).parent.mkdir(parents=True)
        (root / f"{prefix}-Ques.json").write_text(json.dumps(
            [{"image_id": i, "question": q, "question_id": qid} for qid, i, q, _, _ in rows]))
        annotations = [{"question_id": qid, "image_id": i, "question_type": " ".join(q.lower().split()[:2]),
                        "answer_type": "other", "multiple_choice_answer": mc,
                        "answers": [{"answer": a, "answer_id": k + 1} for k, a in enumerate(answers)]}
                       for qid, i, q, mc, answers in rows]
        annotations[0].pop("question_type")
        (root / f"{prefix}-Ans.json").write_text(json.dumps(annotations[::-1]))
    questions = {qid: {"image_id": i, "question": q, "question_id": qid} for qid, i, q, _, _ in VS_SPLITS["IID-Test/IID-Test"]}
    for name, ids in VS_OOD.items():
        (root / "OOD-Test" / name).mkdir(parents=True)
        (root / "OOD-Test" / name / f"OOD-Test-{name}-Ques.json").write_text(json.dumps([questions[i] for i in ids]))
    return root, coco


def test_vs_splits_vocabulary_ood_sets_and_pictures_from_either_coco_folder(prep, tmp_path, capsys):
    raw, coco = make_vs(tmp_path / "vqa-vs", tmp_path / "coco")
    out = tmp_path / "out"
    assert prep.main(["--raw", str(raw), "--images", str(coco), "--out", str(out), "--image-size", "8",
                      "--min-answer-count", "1", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "(vqa-vs)" in printed and "out-of-distribution test sets: QT 2, KO 1, KW+KO 1" in printed
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["dataset"] == "vqa-vs" and meta["vocab_from"] == "train" and meta["valid_fraction"] is None
    assert meta["answers"] == ["2", "3", "cat", "dog", "no", "yes"]  # the Training split's multiple-choice answers
    assert meta["ood_sets"] == {"QT": 2, "KO": 1, "KW+KO": 1}
    assert {s: c["questions"] for s, c in meta["counts"].items()} == {"train": 6, "valid": 2, "test": 5}
    test = {q["question_id"]: q for q in lines(out / "test.jsonl")}
    assert {qid: q["ood"] for qid, q in test.items()} == {"21": ["QT"], "22": ["QT", "KW+KO"], "23": [], "24": ["KO"],
                                                         "25": []}
    assert test["22"]["answers"] == {"2": 1.0} and test["25"]["answers"] == {"cat": 1.0}
    assert test["21"]["question_type"] == "unknown" and test["23"]["question_type"] == "what animal?"
    assert "ood" not in lines(out / "train.jsonl")[0]
    pictures = np.load(out / "test_images.npy")
    for q in test.values():  # 101, 102 from val2014, 7 from train2014
        assert np.abs(pictures[q["image"]].reshape(-1, 3).mean(0) - colour(int(q["image_id"]))).max() < 4


# ---------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def small_easy_template(easy_raw, tmp_path_factory) -> Path:
    """easy-VQA's layout with its first 20 training and 10 test images and their questions."""
    root = tmp_path_factory.mktemp("small_easy") / "raw"
    root.mkdir()
    shutil.copy(easy_raw / "answers.txt", root / "answers.txt")
    for split, n in (("train", 20), ("test", 10)):
        (root / split / "images").mkdir(parents=True)
        questions = [q for q in published_questions(easy_raw, split) if q[2] < n]
        (root / split / "questions.json").write_text(json.dumps(questions))
        for i in range(n):
            shutil.copy(easy_raw / split / "images" / f"{i}.png", root / split / "images" / f"{i}.png")
    return root


def append_question(name: str, entry):
    def mutate(raw: Path):
        questions = json.loads((raw / name).read_text())
        questions.append(entry)
        (raw / name).write_text(json.dumps(questions))
        return len(questions) - 1
    return mutate


def write(name: str, text: str):
    def mutate(raw: Path):
        (raw / name).write_text(text)
    return mutate


def truncate(name: str):
    def mutate(raw: Path):
        data = (raw / name).read_bytes()
        (raw / name).write_bytes(data[: len(data) // 2])
    return mutate


def delete(name: str):
    def mutate(raw: Path):
        (raw / name).unlink()
    return mutate


def edit_v2(name: str, key: str, change):
    def mutate(raw: Path):
        data = json.loads((raw / name).read_text())
        change(data[key])
        (raw / name).write_text(json.dumps(data))
    return mutate


def drop_annotation(question_id: int):
    return lambda annotations: annotations.remove(next(a for a in annotations if a["question_id"] == question_id))


def drop_field(question_id: int, field: str, key: str = "question_id"):
    return lambda entries: next(e for e in entries if e[key] == question_id).pop(field)


def add_ood_question(name: str, question_id: int):
    return append_question(f"OOD-Test/{name}/OOD-Test-{name}-Ques.json",
                           {"image_id": 101, "question": "Is there a cat?", "question_id": question_id})


TQ, TA = "v2_OpenEnded_mscoco_train2014_questions.json", "v2_mscoco_train2014_annotations.json"
VA = "v2_mscoco_val2014_annotations.json"
BAD = {  # id: (data set, change to the raw folder, prepare's arguments, what the message must say)
    "easy json": ("easy", write("train/questions.json", '[\n["what?", "yes", 0],\n["what?" "yes", 1]\n]'), {},
                  "train/questions.json: not valid JSON (Expecting ',' delimiter at line 3 column 10)"),
    "easy not a list": ("easy", write("test/questions.json", '{"questions": []}'), {},
                        "test/questions.json: expected a JSON list of [question, answer, image_id], got dict"),
    "easy entry of 2": ("easy", append_question("train/questions.json", ["what is it?", "yes"]), {},
                        "train/questions.json entry {}: expected a list [question, answer, image_id], got list of 2 "
                        "(no field 'image_id')"),
    "easy entry dict": ("easy", append_question("test/questions.json", {"question": "what?"}), {},
                        "test/questions.json entry {}: expected a list [question, answer, image_id], got dict"),
    "easy question number": ("easy", append_question("train/questions.json", [7, "yes", 0]), {},
                             "train/questions.json entry {}: field 'question': expected a non-empty string, got 7"),
    "easy question empty": ("easy", append_question("train/questions.json", ["  ", "yes", 0]), {},
                            "train/questions.json entry {}: field 'question': expected a non-empty string"),
    "easy unknown answer": ("easy", append_question("test/questions.json", ["what color?", "purple", 0]), {},
                            "test/questions.json entry {}: field 'answer': unknown answer 'purple' (not in answers.txt)"),
    "easy image id": ("easy", append_question("train/questions.json", ["what color?", "red", "0"]), {},
                      "train/questions.json entry {}: field 'image_id': expected a non-negative integer, got '0'"),
    "easy missing image": ("easy", append_question("train/questions.json", ["what color?", "red", 25]), {},
                           "train/images/25.png: no such image (needed by train/questions.json entry {}, "
                           "question_id train-{})"),
    "easy truncated image": ("easy", truncate("test/images/3.png"), {}, "test/images/3.png: not a readable image ("),
    "easy no test split": ("easy", delete("test/questions.json"), {},
                           "not a complete easy-VQA folder: no test/questions.json"),
    "no layout": ("easy", lambda raw: [shutil.rmtree(raw), raw.mkdir()], {},
                  "no layout recognised: expected answers.txt and train/questions.json (easy-VQA), "
                  "v2_OpenEnded_mscoco_train2014_questions.json"),
    "no folder": ("easy", shutil.rmtree, {}, ": no such folder"),
    "v2 json": ("v2", write(VA, '{"annotations": [}'), {}, f"{VA}: not valid JSON (Expecting value at line 1"),
    "v2 no annotation": ("v2", edit_v2(TA, "annotations", drop_annotation(13)), {},
                         f"{TA}: no annotation for question_id 13 ({TQ} questions[2])"),
    "v2 no answers": ("v2", edit_v2(VA, "annotations", drop_field(22, "answers")), {},
                      f"{VA} annotations[2] (question_id 22): no field 'answers'"),
    "v2 no question": ("v2", edit_v2(TQ, "questions", drop_field(14, "question")), {},
                       f"{TQ} questions[3]: no field 'question'"),
    "v2 missing image": ("v2", delete("val2014/COCO_val2014_000000000102.jpg"), {},
                         "val2014/COCO_val2014_000000000102.jpg: no such image (needed by "
                         "v2_OpenEnded_mscoco_val2014_questions.json questions[1], question_id 22)"),
    "v2 truncated image": ("v2", truncate("train2014/COCO_train2014_000000000030.jpg"), {},
                           "train2014/COCO_train2014_000000000030.jpg: not a readable image ("),
    "v2 missing file": ("v2", delete(VA), {}, f"not a complete VQA v2 folder: no {VA}"),
    "vs ood question not in test": ("vs", add_ood_question("QT", 99), {},
                                    "OOD-Test/QT/OOD-Test-QT-Ques.json[{}]: question_id 99 is not in the IID test set "
                                    "(IID-Test/IID-Test-Ques.json)"),
    "vs missing picture": ("vs", lambda raw: (raw.parent / "coco/val2014/COCO_val2014_000000000102.jpg").unlink(), {},
                           "train2014/COCO_train2014_000000000102.jpg or val2014/COCO_val2014_000000000102.jpg: no such "
                           "image (needed by IID-Test/IID-Test-Ques.json[1], question_id 22)"),
    "vs not a list": ("vs", write("Val/Val-Ans.json", '{"annotations": []}'), {},
                      "Val/Val-Ans.json: expected a JSON list of objects, got dict"),
    "vs no annotation": ("vs", write("Val/Val-Ans.json", "[]"), {},
                         "Val/Val-Ans.json: no annotation for question_id 17 (Val/Val-Ques.json[0])"),
    "vs missing file": ("vs", delete("IID-Test/IID-Test-Ans.json"), {},
                        "not a complete VQA-VS folder: no IID-Test/IID-Test-Ans.json"),
    "no pictures folder": ("vs", None, {"images": "/nonexistent/coco"}, "/nonexistent/coco: no such folder (--images)"),
    "image size": ("easy", None, {"image_size": 4}, "image_size (--image-size) must be an integer of at least 8, got 4"),
    "valid fraction 0": ("easy", None, {"valid_fraction": 0.0}, "valid_fraction (--valid-fraction) must be in (0, 1)"),
    "valid fraction 1": ("easy", None, {"valid_fraction": 1.0}, "valid_fraction (--valid-fraction) must be in (0, 1)"),
    "valid fraction nan": ("easy", None, {"valid_fraction": float("nan")},
                           "valid_fraction (--valid-fraction) must be in (0, 1), got nan"),
    "valid fraction inf": ("easy", None, {"valid_fraction": float("inf")},
                           "valid_fraction (--valid-fraction) must be in (0, 1), got inf"),
    "raw a link loop": ("easy", lambda raw: [shutil.rmtree(raw), raw.symlink_to(raw)], {},
                        "raw: cannot be read (Too many levels of symbolic links) (--raw)"),
    "min answer count": ("v2", None, {"min_answer_count": 0},
                         "min_answer_count (--min-answer-count) must be an integer of at least 1, got 0"),
    "limit": ("easy", None, {"limit": 0}, "limit (--limit) must be a positive integer, got 0"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_stops_with_one_line_and_writes_nothing(prep, small_easy_template, tmp_path, case):
    dataset, mutate, kwargs, message = BAD[case]
    raw = tmp_path / "raw"
    if dataset == "easy":
        shutil.copytree(small_easy_template, raw)
    elif dataset == "vs":
        make_vs(raw, tmp_path / "coco")
        kwargs = {"images": tmp_path / "coco", "min_answer_count": 1, **kwargs}
    else:
        make_v2(raw)
        kwargs = {"valid_fraction": 0.34, "min_answer_count": 2, **kwargs}
    index = mutate(raw) if mutate else None
    out = tmp_path / "new" / "out"
    with pytest.raises(prep.PrepareError) as e:
        prep.prepare(raw, out, progress=False, **kwargs)
    text = str(e.value)
    assert "\n" not in text
    assert message.format(index, index) in text, text
    assert not (tmp_path / "new").exists()  # nor the folder above it, nor a temporary one


def test_bad_input_leaves_an_existing_output_untouched(prep, small_easy_template, tmp_path, capsys):
    raw = tmp_path / "raw"
    shutil.copytree(small_easy_template, raw)
    out = tmp_path / "out"
    out.mkdir()
    (out / "metadata.json").write_text("an earlier run")
    (out / "train.jsonl").write_text("an earlier run")
    with pytest.raises(prep.PrepareError, match="already exists; pass --overwrite"):
        prep.prepare(raw, out, progress=False)
    truncate("train/images/7.png")(raw)
    assert prep.main(["--raw", str(raw), "--out", str(out), "--overwrite", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: train/images/7.png: not a readable image (")
    assert err.count("\n") == 1
    assert sorted(p.name for p in out.iterdir()) == ["metadata.json", "train.jsonl"]
    assert (out / "metadata.json").read_text() == "an earlier run"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "raw"]
    shutil.copy(small_easy_template / "train/images/7.png", raw / "train/images/7.png")
    meta = prep.prepare(raw, out, overwrite=True, progress=False)
    assert meta["counts"]["train"]["images"] == 18 and meta["counts"]["valid"]["images"] == 2
    assert (out / "metadata.json").read_text() != "an earlier run"
    # a folder this script did not write is never replaced, --overwrite or not
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("mine")
    assert prep.main(["--raw", str(raw), "--out", str(mine), "--overwrite", "--no-progress"]) == 2
    assert "thesis.tex, which this script never writes" in capsys.readouterr().err
    assert (mine / "thesis.tex").read_text() == "mine"


def test_dataset_can_be_forced(prep, small_easy_template, tmp_path):
    with pytest.raises(prep.PrepareError, match="not a complete VQA v2 folder: no v2_OpenEnded_mscoco_train2014"):
        prep.prepare(small_easy_template, tmp_path / "out", dataset="vqa-v2", progress=False)
    raw = make_v2(tmp_path / "raw")
    with pytest.raises(prep.PrepareError, match="not a complete easy-VQA folder: no answers.txt"):
        prep.prepare(raw, tmp_path / "out", dataset="easy-vqa", progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("out, message", [("vqa-vs", "is or holds the input"), ("coco", "is or holds the input"),
                                          (".", "is or holds the input"), ("file", "is a file")])
def test_output_over_an_input_or_a_file_is_refused(prep, tmp_path, capsys, out, message):
    raw, coco = make_vs(tmp_path / "vqa-vs", tmp_path / "coco")
    (tmp_path / "file").write_text("mine")
    assert prep.main(["--raw", str(raw), "--images", str(coco), "--out", str(tmp_path / out), "--overwrite",
                      "--min-answer-count", "1", "--no-progress"]) == 2
    assert message in capsys.readouterr().err
    assert (raw / "Val" / "Val-Ques.json").is_file() and (coco / "val2014").is_dir()  # nothing deleted
    assert (tmp_path / "file").read_text() == "mine"


# ---------------------------------------------------------------------- where the output goes


@pytest.mark.parametrize("case", ["unwritable parent", "mount point", "--out a link loop", "--images a link loop"])
def test_output_and_input_locations_are_checked_before_any_file_is_read(prep, small_easy_template, tmp_path,
                                                                        monkeypatch, capsys, case):
    parent, out, args = tmp_path / "parent", tmp_path / "parent" / "out", []
    parent.mkdir()
    message = bad_output_location(case, out, monkeypatch)
    if message is None:
        (tmp_path / "loop").symlink_to(tmp_path / "loop")
        args = ["--images", str(tmp_path / "loop")]
        message = f"{tmp_path / 'loop'}: cannot be read (Too many levels of symbolic links) (--images)"
    monkeypatch.setattr(prep, "detect", lambda raw: pytest.fail("the input was read before the output was checked"))
    assert prep.main(["--raw", str(small_easy_template), "--out", str(out), *args, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {message}"), err
    if case == "--out a link loop":
        assert "loop" in err.lower()
    assert sorted(p.name for p in parent.iterdir()) == ([] if case != "--out a link loop" else ["out"])


@pytest.mark.parametrize("option", ["--raw", "--images", "--out"])
def test_an_empty_path_is_refused_naming_the_option(prep, small_easy_template, tmp_path, capsys, option):
    args = {"--raw": str(small_easy_template), "--images": str(small_easy_template), "--out": str(tmp_path / "out")}
    args[option] = ""  # an unset variable in a shell script: not the working folder
    assert prep.main([*(x for kv in args.items() for x in kv), "--no-progress"]) == 2
    assert capsys.readouterr().err == f"error: {option[2:]} ({option}): an empty path; name a folder\n"
    assert not (tmp_path / "out").exists()


def test_no_room_for_the_output_is_said_before_any_image_is_read(prep, small_easy_template, tmp_path, monkeypatch,
                                                                 capsys):
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=2**20))
    monkeypatch.setattr(prep, "load_image", lambda *args: pytest.fail("an image was read before the room was checked"))
    out = tmp_path / "new" / "out"
    assert prep.main(["--raw", str(small_easy_template), "--out", str(out), "--image-size", "256", "--no-progress"]) == 2
    err = capsys.readouterr().err
    questions = sum(len(published_questions(small_easy_template, s)) for s in ("train", "test"))
    assert err == (f"error: {tmp_path}: 1 MiB free, but 30 images of 256 x 256 and {questions} questions needs "
                   f"about 6 MiB; free some space or write elsewhere\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_disk_that_fills_while_writing_stops_in_one_line_and_leaves_nothing(prep, small_easy_template, tmp_path,
                                                                              monkeypatch, capsys):
    """The image arrays are memory-mapped: without their blocks allocated first, a full disk
    killed the process with SIGBUS (exit 135, no message) and left the temporary folder."""
    earlier = tmp_path / "earlier"
    prep.prepare(small_easy_template, earlier, progress=False, image_size=8)
    before = {p.name: p.read_bytes() for p in earlier.iterdir()}
    monkeypatch.setattr(os, "posix_fallocate", disk_full, raising=False)
    out = tmp_path / "new" / "out"
    assert prep.main(["--raw", str(small_easy_template), "--out", str(out), "--no-progress"]) == 2
    assert capsys.readouterr().err == f"error: {out / 'train_images.npy'}: cannot be written (No space left on device)\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["earlier"]  # nor the folders made for it, nor a temporary one
    # an earlier output stays as it was
    assert prep.main(["--raw", str(small_easy_template), "--out", str(earlier), "--overwrite", "--no-progress"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert {p.name: p.read_bytes() for p in earlier.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["earlier"]


def test_a_real_full_disk_is_said_in_one_line_not_by_a_bus_error(small_easy_template, tmp_path):
    """On a 300 KiB tmpfs (root only; the tests above cover the same without one)."""
    with small_tmpfs(tmp_path / "disk", "300k") as disk:
        args = ["--raw", str(small_easy_template), "--out", str(disk / "out"), "--image-size", "128", "--no-progress"]
        checked = run_script("prepare_vqa", args)  # the check before the work
        assert checked.returncode == 2 and checked.stderr.count("\n") == 1, checked.stderr
        assert re.match(rf"error: {re.escape(str(disk))}: \d+ KiB free, but 30 images of 128 x 128", checked.stderr)
        filled = run_script("prepare_vqa", args, lie_about_room=True)  # the disk fills while writing
        assert filled.returncode == 2, (filled.returncode, filled.stderr)  # a bus error: -7
        assert filled.stderr == (f"error: {disk / 'out' / 'train_images.npy'}: cannot be written "
                                 f"(No space left on device)\n")
        assert list(disk.iterdir()) == []  # no temporary folder left
