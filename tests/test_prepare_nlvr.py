"""data_scripts/prepare_nlvr.py on the real NLVR (v1) files: the renderer against the published
PNGs, the prepared folder against the JSON lines, and one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import load_data_script
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def prep():
    return load_data_script("prepare_nlvr")


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
    assert meta["counts"] == {"train": 3525, "valid": 989, "test": 990}
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
])
def test_bad_line_stops_with_one_line_naming_file_line_and_field(prep, raw, tmp_path, line, message):
    folder = small_raw(raw, tmp_path / "raw", n=1, with_images=False)
    with open(folder / "dev.json", "a") as f:
        f.write(line + "\n")
    out = tmp_path / "out"
    with pytest.raises(prep.PrepareError) as e:
        prep.prepare(folder, out, progress=False)
    assert str(e.value).startswith(message), str(e.value)
    assert not out.exists()  # nothing half-written
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


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
