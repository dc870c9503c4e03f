"""data_scripts/prepare_nlvr.py on the real NLVR (v1) files: the renderer against the published
PNGs, the prepared folder against the JSON lines, and one-line errors for bad input; and on a
miniature NLVR2 folder (real JSON lines, tiny generated photographs: ``nlvr2_files``)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from faults import refuse_open, script_fixture
from nlvr2_files import image_path, make_nlvr2
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


prep = script_fixture("prepare_nlvr")


@pytest.fixture(scope="module")
def raw(shared_data) -> Path:
    return shared_data / "nlvr" / "nlvr1"


@pytest.fixture(scope="module")
def built(prep, raw, tmp_path_factory):
    """The whole data set, images kept small (the renderer check runs at full size anyway)."""
    out = tmp_path_factory.mktemp("nlvr") / "prepared"
    meta = prep.prepare(raw, out, downsample_factor=10, progress=False)
    return out, meta


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def small_raw(raw: Path, root: Path, n: int = 3, with_images: bool = True) -> Path:
    """A raw folder holding the first ``n`` examples of each split (and their published PNGs)."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("train_partial.json", "dev.json", "test.json"):
        (root / name).write_text("\n".join((raw / name).read_text().splitlines()[:n]) + "\n")
    if with_images:
        with tarfile.open(raw / "images-dev-test.tar") as src, tarfile.open(root / "images-dev-test.tar", "w") as dst:
            for split in ("dev", "test"):
                for x in lines(root / f"{split}.json"):
                    member = src.getmember(f"{split}/images/{x['directory']}/{split}-{x['identifier']}-0.png")
                    dst.addfile(member, src.extractfile(member))
    return root


def test_renderer_agrees_with_the_published_pngs_over_the_dev_split(built):
    out, meta = built
    checks = meta["renderer"]["agreement_with_published"]
    assert checks["valid"]["examples"] == 989 and checks["test"]["examples"] == 990
    for split in ("valid", "test"):
        assert checks[split]["pixels_equal"] >= 0.99, checks[split]
        assert checks[split]["pixels_within_8"] >= checks[split]["pixels_equal"]


def test_rendered_pictures_match_png_files_extracted_to_a_temporary_folder(prep, raw, tmp_path):
    """Independently of the script's own check: extract a few PNGs (into tmp only) and compare."""
    examples = lines(raw / "dev.json")[::97]
    with tarfile.open(raw / "images-dev-test.tar") as tar:
        for x in examples:
            name = f"dev/images/{x['directory']}/dev-{x['identifier']}-0.png"
            tar.extract(tar.getmember(name), tmp_path, filter="data")
    for x in examples:
        published = np.asarray(Image.open(tmp_path / f"dev/images/{x['directory']}/dev-{x['identifier']}-0.png").convert("RGB"))
        rendered = prep.render(prep.check_world(x["structured_rep"], "test"))
        assert rendered.shape == published.shape == (100, 400, 3)
        assert (rendered == published).all(-1).mean() >= 0.99, x["identifier"]


def test_prepared_folder_holds_every_example_with_its_label_and_image(built, raw):
    out, meta = built
    assert meta["counts"] == {"train": 3525, "valid": 989, "test": 990} and meta["dataset"] == "nlvr"
    assert meta["partial_train"] and meta["source"]["train"]["file"] == "train_partial.json"
    for split, name in (("train", "train_partial.json"), ("valid", "dev.json"), ("test", "test.json")):
        source, prepared = lines(raw / name), lines(out / f"{split}.jsonl")
        assert [p["sentence"] for p in prepared] == [s["sentence"].strip() for s in source]
        assert [p["label"] for p in prepared] == [int(s["label"] == "true") for s in source]
        images = np.load(out / f"{split}_images.npy", mmap_mode="r")
        assert images.shape == (len(source), 10, 40, 3) and images.dtype == np.uint8
    assert meta["majority_baseline"]["test"] == pytest.approx(556 / 990)
    assert meta["majority_baseline"]["valid"] == pytest.approx(547 / 989)


def test_downsampling_averages_blocks_of_the_full_picture(prep, raw):
    world = lines(raw / "test.json")[0]["structured_rep"]
    full = prep.render(prep.check_world(world, "test")).astype(np.float64)
    small = prep.downsample(full.astype(np.uint8), 2)
    expected = full.reshape(50, 2, 200, 2, 3).mean((1, 3))
    assert np.abs(small - expected).max() <= 0.5 + 1e-9
    # the box edges stay on whole pixels: box 2 starts at published x = 150
    assert (small[:, 74] == (128, 128, 128)).all() and (small[:, 75] != (128, 128, 128)).any()


@pytest.mark.parametrize("line, message", [
    ('{"sentence": "x", "label": "true"', "dev.json line 2: not valid JSON"),
    ('{"identifier": "1-0", "sentence": "x", "label": "true"}', "dev.json line 2: no field 'structured_rep'"),
    ('{"identifier": "1-0", "sentence": "x", "label": "maybe", "structured_rep": [[], [], []]}',
     "dev.json line 2: field 'label': unknown label 'maybe'"),
    ('{"identifier": "1-0", "sentence": "x", "label": "true", "structured_rep": [[], []]}',
     "dev.json line 2: field 'structured_rep': expected a list of 3 boxes"),
    ('{"identifier": "1-0", "sentence": "x", "label": "true", "structured_rep": [[], [{"type": "square", '
     '"color": "Red", "x_loc": 0, "y_loc": 0, "size": 10}], []]}',
     "dev.json line 2: field 'structured_rep'[1][0].color: unknown colour 'Red'"),
    ('{"identifier": "1-0", "sentence": "x", "label": "true", "structured_rep": [[{"type": "square", '
     '"color": "Black", "x_loc": 95, "y_loc": 0, "size": 10}], [], []]}',
     "dev.json line 2: field 'structured_rep'[0][0].x_loc: expected an integer in [0, 90], got 95"),
    ('{"identifier": "1572-0", "sentence": "x", "label": "true", "structured_rep": [[], [], []]}',
     "dev.json line 2: identifier '1572-0' is also on line 1"),  # two files run together
    (b'{"identifier": "1-0", "sentence": "caf\xe9", "label": "true", "structured_rep": [[], [], []]}',
     "dev.json line 2: not UTF-8 text (invalid continuation byte at byte 39)"),  # Latin-1
])
def test_bad_line_stops_with_one_line_naming_file_line_and_field(prep, raw, tmp_path, line, message):
    folder = small_raw(raw, tmp_path / "raw", n=1, with_images=False)
    with open(folder / "dev.json", "ab") as f:
        f.write((line if isinstance(line, bytes) else line.encode()) + b"\n")
    out = tmp_path / "out"
    with pytest.raises(prep.PrepareError) as e:
        prep.prepare(folder, out, progress=False)
    assert str(e.value).startswith(message), str(e.value)
    assert not out.exists()  # nothing half-written
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


@pytest.mark.parametrize("source, target, message", [
    ("dev.json", "test.json", "test.json line 2: identifier {id!r} is also in dev.json line 1"),  # valid = test
    ("test.json", "train_partial.json", "test.json line 1: identifier {id!r} is also in train_partial.json line 2"),
])
def test_an_example_in_two_splits_is_refused_naming_both_files_and_lines(prep, raw, tmp_path, capsys, source, target,
                                                                        message):
    folder = small_raw(raw, tmp_path / "raw", n=1, with_images=False)
    first = (folder / source).read_text()
    with open(folder / target, "a") as f:  # the first example of one split appended to another
        f.write(first)
    assert prep.main(["--raw", str(folder), "--out", str(tmp_path / "out"), "--no-image-check", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {message.format(id=json.loads(first)['identifier'])} (one example in two splits)\n", err
    assert not (tmp_path / "out").exists()


def test_nlvr2_example_in_two_splits_is_refused(prep, shared_data, tmp_path):
    root, _ = make_nlvr2(shared_data, tmp_path / "raw", n=2, n_train=2)
    first = (root / "dev.json").read_text().splitlines()[0]
    with open(root / "test1.json", "a") as f:
        f.write(first + "\n")
    with pytest.raises(prep.PrepareError, match=rf"^test1.json line 3: identifier '{json.loads(first)['identifier']}' "
                                                 r"is also in dev.json line 1"):
        prep.prepare(root, tmp_path / "out", image_size=4, progress=False)


def test_missing_published_image_is_named(prep, raw, tmp_path):
    folder = small_raw(raw, tmp_path / "raw", n=2)
    extra = lines(raw / "dev.json")[5]  # its PNG is not in the small archive
    with open(folder / "dev.json", "a") as f:
        f.write(json.dumps(extra) + "\n")
    with pytest.raises(prep.PrepareError, match=rf"images-dev-test.tar: no image dev/images/{extra['directory']}/"
                                                 rf"dev-{extra['identifier']}-0.png for dev.json line 3"):
        prep.prepare(folder, tmp_path / "out", progress=False)
    # without the check the images are rendered all the same
    meta = prep.prepare(folder, tmp_path / "out", check_images=False, progress=False)
    assert meta["counts"]["valid"] == 3 and meta["renderer"]["agreement_with_published"] is None


def test_an_archive_that_is_not_a_tar_is_named_in_one_line(prep, raw, tmp_path):
    folder = small_raw(raw, tmp_path / "raw", n=1, with_images=False)
    (folder / "images-dev-test.tar").write_bytes(b"not a tar")
    with pytest.raises(prep.PrepareError, match="images-dev-test.tar: not a readable tar archive") as e:
        prep.prepare(folder, tmp_path / "out", progress=False)
    assert "\n" not in str(e.value)  # tarfile gives one reason a line


@pytest.mark.parametrize("out, message", [("raw", "is or holds the input"), (".", "is or holds the input"),
                                          ("file", "is a file")])
def test_output_over_the_input_or_a_file_is_refused(prep, raw, tmp_path, capsys, out, message):
    folder = small_raw(raw, tmp_path / "raw", n=1, with_images=False)
    (tmp_path / "file").write_text("mine")
    assert prep.main(["--raw", str(folder), "--out", str(tmp_path / out), "--overwrite", "--no-progress"]) == 2
    assert message in capsys.readouterr().err
    assert (folder / "dev.json").is_file() and (tmp_path / "file").read_text() == "mine"  # nothing deleted


def test_missing_split_file_is_named(prep, raw, tmp_path):
    folder = small_raw(raw, tmp_path / "raw", n=2, with_images=False)
    (folder / "test.json").unlink()
    with pytest.raises(prep.PrepareError, match="no test.json"):
        prep.prepare(folder, tmp_path / "out", progress=False)


def test_full_train_split_is_preferred_to_the_partial_one(prep, raw, tmp_path):
    folder = small_raw(raw, tmp_path / "raw", n=2, with_images=False)
    (folder / "train.json").write_text((raw / "dev.json").read_text().splitlines()[10] + "\n")
    meta = prep.prepare(folder, tmp_path / "out", check_images=False, progress=False)
    assert meta["counts"]["train"] == 1 and not meta["partial_train"]


def test_command_line_refuses_an_existing_output_and_overwrites_on_request(prep, raw, tmp_path, capsys):
    folder = small_raw(raw, tmp_path / "raw", n=3)
    out = tmp_path / "out"
    args = ["--raw", str(folder), "--out", str(out), "--downsample", "5", "--no-progress"]
    assert prep.main(args) == 0
    printed = capsys.readouterr()
    assert "renderer agrees with the published dev PNGs" in printed.out and printed.err == ""
    assert np.load(out / "valid_images.npy").shape == (3, 20, 80, 3)
    # as a command: one line on stderr, exit status 2
    again = subprocess.run([sys.executable, str(ROOT / "data_scripts" / "prepare_nlvr.py"), *args],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 2
    assert again.stderr.strip().count("\n") == 0 and "already exists; pass --overwrite" in again.stderr
    assert prep.main(args + ["--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["metadata.json", *(f"{s}.jsonl" for s in ("train", "valid", "test")),
         *(f"{s}_images.npy" for s in ("train", "valid", "test"))])


# ---------------------------------------------------------------------- NLVR2


@pytest.fixture(scope="module")
def nlvr2(shared_data, tmp_path_factory):
    """A miniature NLVR2 folder (48 / 24 / 24 examples) and each identifier's (left, right) colours."""
    return make_nlvr2(shared_data, tmp_path_factory.mktemp("nlvr2") / "raw")


def test_nlvr2_is_detected_and_prepared_as_left_right_image_pairs(prep, nlvr2, tmp_path, capsys):
    root, colours = nlvr2
    out = tmp_path / "out"
    args = ["--raw", str(root), "--out", str(out), "--image-size", "8", "--no-progress"]
    assert prep.main(args) == 0  # --dataset auto: told from the first line of dev.json
    assert "NLVR2, train 48, valid 24, test 24 examples" in capsys.readouterr().out
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["dataset"] == "nlvr2" and meta["renderer"] is None
    assert meta["counts"] == {"train": 48, "valid": 24, "test": 24}
    assert meta["skipped_missing_images"] == {"train": 0, "valid": 0, "test": 0}
    assert meta["image"]["size"] == 8 and meta["image"]["pair"] is True
    for split, name in (("train", "train.json"), ("valid", "dev.json"), ("test", "test1.json")):
        source, prepared = lines(root / name), lines(out / f"{split}.jsonl")
        assert [p["identifier"] for p in prepared] == [s["identifier"] for s in source]
        assert [p["sentence"] for p in prepared] == [s["sentence"].strip() for s in source]
        assert [p["label"] for p in prepared] == [int(s["label"] == "True") for s in source]
        assert [p["directory"] for p in prepared] == [str(s.get("directory", "")) for s in source]
        assert meta["true_fraction"][split] == pytest.approx(np.mean([p["label"] for p in prepared]))
        images = np.load(out / f"{split}_images.npy")
        assert images.shape == (len(source), 2, 8, 8, 3) and images.dtype == np.uint8
        for p, pair in zip(prepared, images):  # left is img0, right img1: every pixel of its colour
            left, right = colours[p["identifier"]]
            assert (pair[0] == left).all() and (pair[1] == right).all(), p["identifier"]
    assert any(p["directory"] for p in lines(out / "train.jsonl"))
    # an existing output is refused, replaced on request
    assert prep.main(args) == 2 and "already exists" in capsys.readouterr().err
    assert prep.main(args + ["--overwrite", "--image-size", "4"]) == 0
    assert np.load(out / "test_images.npy").shape == (24, 2, 4, 4, 3)


def test_nlvr2_missing_image_is_named_or_skipped_on_request(prep, shared_data, tmp_path, capsys):
    root, _ = make_nlvr2(shared_data, tmp_path / "raw", n=12, n_train=6)
    dev = lines(root / "dev.json")
    victim = dev[2]["identifier"]
    pair = victim.rsplit("-", 1)[0]
    image_path(root, victim, 1).unlink()
    out = tmp_path / "out"
    with pytest.raises(prep.PrepareError) as e:
        prep.prepare(root, out, image_size=4, progress=False)
    assert str(e.value).startswith(f"dev.json line 3 (identifier {victim}): no image "
                                   f"{root / 'images' / 'dev' / f'{pair}-img1.png'}"), str(e.value)
    assert not out.exists()
    assert prep.main(["--raw", str(root), "--out", str(out), "--image-size", "4", "--no-progress", "--skip-missing"]) == 0
    left_out = [x["identifier"] for x in dev if x["identifier"].rsplit("-", 1)[0] == pair]
    assert f"{len(left_out)} examples left out for missing images" in capsys.readouterr().out
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["skipped_missing_images"] == {"train": 0, "valid": len(left_out), "test": 0}
    assert meta["counts"]["valid"] == 12 - len(left_out)
    kept = [x["identifier"] for x in lines(out / "valid.jsonl")]
    assert kept == [x["identifier"] for x in dev if x["identifier"] not in left_out]
    assert np.load(out / "valid_images.npy").shape == (len(kept), 2, 4, 4, 3)


def test_nlvr2_truncated_image_is_named(prep, shared_data, tmp_path):
    root, _ = make_nlvr2(shared_data, tmp_path / "raw", n=6, n_train=6)
    broken = image_path(root, lines(root / "test1.json")[0]["identifier"], 0)
    data = broken.read_bytes()
    broken.write_bytes(data[:len(data) // 2])
    with pytest.raises(prep.PrepareError, match=re.escape(f"{broken}: not a readable image")):
        prep.prepare(root, tmp_path / "out", image_size=4, progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("line, message", [
    ('{"identifier": "dev-1-0-0", "sentence": "x", "label": "True"', "dev.json line 7: not valid JSON"),
    ('{"identifier": "dev-1-0-0", "sentence": "x"}', "dev.json line 7: no field 'label'"),
    ('{"identifier": "dev-1-0-0", "sentence": "x", "label": "Maybe"}', "dev.json line 7: field 'label': unknown label 'Maybe'"),
    ('{"identifier": "dev-1-0-0", "sentence": "", "label": "True"}', "dev.json line 7: field 'sentence'"),
])
def test_nlvr2_bad_line_stops_with_one_line_naming_file_line_and_field(prep, shared_data, tmp_path, line, message):
    root, _ = make_nlvr2(shared_data, tmp_path / "raw", n=6, n_train=6)
    with open(root / "dev.json", "a") as f:
        f.write(line + "\n")
    with pytest.raises(prep.PrepareError) as e:
        prep.prepare(root, tmp_path / "out", image_size=4, progress=False)
    assert str(e.value).startswith(message) and "\n" not in str(e.value), str(e.value)
    assert not (tmp_path / "out").exists()


def test_nlvr2_missing_file_and_a_forced_dataset_are_named(prep, raw, nlvr2, tmp_path):
    root, _ = nlvr2
    with pytest.raises(prep.PrepareError, match="no test.json"):  # NLVR2 files read as v1
        prep.prepare(root, tmp_path / "out", dataset="nlvr", progress=False)
    with pytest.raises(prep.PrepareError, match=r"no train.json \(the NLVR2 train split\)"):  # v1 files as NLVR2
        prep.prepare(raw, tmp_path / "out", dataset="nlvr2", progress=False)
    assert prep.detect_dataset(root) == "nlvr2" and prep.detect_dataset(raw) == "nlvr"
    with pytest.raises(prep.PrepareError, match="no such folder"):
        prep.prepare(root, tmp_path / "out", images=tmp_path / "nowhere", progress=False)


# ---------------------------------------------------------------------- unreadable input, settings of the other data set


def test_an_unreadable_split_file_is_named_in_one_line(prep, raw, tmp_path, capsys, monkeypatch):
    folder = small_raw(raw, tmp_path / "raw", n=2, with_images=False)
    refuse_open(monkeypatch, prep, "test.json")
    assert prep.main(["--raw", str(folder), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    assert capsys.readouterr().err == f"error: {folder / 'test.json'}: cannot read it (Permission denied)\n"
    assert not (tmp_path / "out").exists()


def test_nlvr2_images_folder_as_a_symlink_loop_is_named_in_one_line(prep, shared_data, tmp_path, capsys):
    root, _ = make_nlvr2(shared_data, tmp_path / "raw", n=6, n_train=6)
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    assert prep.main(["--raw", str(root), "--images", str(loop), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {loop}: no such folder (the NLVR2 photographs") and err.count("\n") == 1, err


def test_a_setting_of_either_data_set_is_checked_whichever_is_read(prep, raw, nlvr2, tmp_path):
    root, _ = nlvr2
    with pytest.raises(prep.PrepareError, match=r"downsample must be one of \(1, 2, 5, 10\)"):
        prep.prepare(root, tmp_path / "out", downsample_factor=3, progress=False)  # NLVR2 does not downsample
    with pytest.raises(prep.PrepareError, match=r"image size must be an integer in \[4, 1024\], got 0"):
        prep.prepare(raw, tmp_path / "out", image_size=0, progress=False)  # NLVR (v1) has no image size
    assert not (tmp_path / "out").exists()
