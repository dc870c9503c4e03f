"""data_scripts/prepare_avmnist.py on the real raw files (small subsets), and its download path."""

from __future__ import annotations

import csv
import errno
import functools
import gzip
import hashlib
import http.server
import json
import os
import shutil
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import scipy.io.wavfile
from faults import script_fixture

from i2m2kit.tasks import avmnist

SMALL = {"n_train": 600, "n_test": 200, "progress": False}


prep = script_fixture("prepare_avmnist")


@pytest.fixture(scope="module")
def built(prep, shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("avmnist") / "data"
    return out, prep.prepare(shared_data, out, seed=0, **SMALL)


def arrays(out: Path) -> dict[str, np.ndarray]:
    return {str(p.relative_to(out)): np.load(p) for p in sorted(out.rglob("*.npy"))}


def read_pairs(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def raw_copy(shared_data: Path, root: Path, without: str | None = None) -> Path:
    """A raw folder of links to the shared files (mnist/ copied, so it can be damaged)."""
    root.mkdir(parents=True, exist_ok=True)
    if without != "mnist":
        shutil.copytree(shared_data / "mnist", root / "mnist")
    for name in ("fsdd", "esc50"):
        if name != without:
            (root / name).symlink_to(shared_data / name)
    return root


# ---------------------------------------------------------------------- the arrays


def test_layout_shapes_and_ranges(built):
    out, metadata = built
    a = arrays(out)
    assert set(a) == {"image/train_data.npy", "image/test_data.npy", "audio/train_data.npy",
                      "audio/test_data.npy", "train_labels.npy", "test_labels.npy"}
    for split, n in (("train", 600), ("test", 200)):
        assert a[f"image/{split}_data.npy"].shape == (n, 784)
        assert a[f"audio/{split}_data.npy"].shape == (n, 112, 112)
        assert a[f"{split}_labels.npy"].shape == (n,)
        assert a[f"image/{split}_data.npy"].dtype == a[f"audio/{split}_data.npy"].dtype == np.uint8
        assert set(np.unique(a[f"{split}_labels.npy"])) == set(range(10))
        # every spectrogram spans the whole 0-255 scale (its loudest bin is 255)
        assert (a[f"audio/{split}_data.npy"].max(axis=(1, 2)) == 255).all()
        assert a[f"audio/{split}_data.npy"].min() == 0
    assert list(a["train_labels.npy"][:5]) == [5, 0, 4, 1, 9]  # MNIST's order is kept
    assert metadata["image"]["components"] < 20 and metadata["image"]["variance_kept"] >= 0.25
    assert json.loads((out / "metadata.json").read_text()) == json.loads(json.dumps(metadata))


def test_pairs_share_the_digit_and_split_speakers_and_noise(built):
    out, metadata = built
    train, test = read_pairs(out / "train_pairs.csv"), read_pairs(out / "test_pairs.csv")
    for split, pairs in (("train", train), ("test", test)):
        labels = np.load(out / f"{split}_labels.npy")
        assert [int(p["label"]) for p in pairs] == labels.tolist()  # image label == audio label
        assert all(p["recording"].split("_")[0] == p["label"] for p in pairs)
    train_speakers, test_speakers = {p["speaker"] for p in train}, {p["speaker"] for p in test}
    assert train_speakers.isdisjoint(test_speakers)
    assert test_speakers == set(metadata["speakers"]["test"]) == {"yweweler"}
    assert train_speakers == set(metadata["speakers"]["train"])
    train_noise, test_noise = {int(p["noise_class"]) for p in train}, {int(p["noise_class"]) for p in test}
    assert train_noise.isdisjoint(test_noise)
    assert test_noise <= set(range(40, 50))
    assert len(metadata["noise"]["train_classes"]) == 40 and len(metadata["noise"]["test_classes"]) == 10
    assert metadata["noise"]["source"] == "esc50"
    inputs = metadata["inputs"]
    assert all(f["published"] for f in inputs["mnist"].values()) and inputs["fsdd"]["published"]
    assert all(c["published"] for c in inputs["esc50"]["clips"].values())


def test_the_task_loader_reads_the_output(built):
    out, _ = built
    data = avmnist.load(out, valid_size=100)
    assert [len(data[s]) for s in ("train", "valid", "test")] == [500, 100, 200]
    assert data["valid"].inputs["audio"].shape == (100, 1, 112, 112)
    assert data["test"].targets.tolist() == np.load(out / "test_labels.npy").tolist()


def test_deterministic_for_a_seed(prep, shared_data, built, tmp_path):
    out, _ = built
    again = tmp_path / "again"
    prep.prepare(shared_data, again, seed=0, **SMALL)
    first, second = arrays(out), arrays(again)
    assert all(np.array_equal(first[k], second[k]) for k in first)
    assert (out / "test_pairs.csv").read_text() == (again / "test_pairs.csv").read_text()


# ---------------------------------------------------------------------- output and errors


def test_existing_output_is_refused_and_replaced_whole(prep, shared_data, built, tmp_path, monkeypatch, capsys):
    out = tmp_path / "data"
    shutil.copytree(built[0], out)  # a seed-0 build
    assert prep.main(["--raw", str(shared_data), "--out", str(out), "--n-train", "100", "--n-test", "50",
                      "--no-progress"]) == 2
    assert "--overwrite" in capsys.readouterr().err

    def fail(*args):
        raise RuntimeError("disk full")

    # a failure after the arrays are written leaves the old folder as it was, and no temporary
    monkeypatch.setattr(prep, "_write_pairs", fail)
    with pytest.raises(RuntimeError):
        prep.prepare(shared_data, out, seed=1, overwrite=True, **SMALL)
    assert json.loads((out / "metadata.json").read_text())["seed"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    monkeypatch.undo()
    prep.prepare(shared_data, out, seed=1, overwrite=True, **SMALL)
    assert json.loads((out / "metadata.json").read_text())["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    # another seed, other pairs (same images: the PCA does not depend on the seed)
    assert not np.array_equal(np.load(out / "audio/train_data.npy"), np.load(built[0] / "audio/train_data.npy"))
    assert np.array_equal(np.load(out / "image/train_data.npy"), np.load(built[0] / "image/train_data.npy"))


def _truncate_idx(mnist: Path) -> str:
    idx = gzip.decompress((mnist / "train-labels-idx1-ubyte.gz").read_bytes())
    (mnist / "train-labels-idx1-ubyte.gz").unlink()
    (mnist / "train-labels-idx1-ubyte").write_bytes(idx[:-100])  # not gzipped: read as well
    return "train-labels-idx1-ubyte"


def _truncate_gzip(mnist: Path) -> str:
    path = mnist / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:50_000])
    return "t10k-images-idx3-ubyte.gz"


def _wrong_file(mnist: Path) -> str:
    shutil.copy(mnist / "t10k-labels-idx1-ubyte.gz", mnist / "t10k-images-idx3-ubyte.gz")
    return "t10k-images-idx3-ubyte.gz"


@pytest.mark.parametrize("damage", [_truncate_idx, _truncate_gzip, _wrong_file])
def test_damaged_mnist_file_is_named(prep, shared_data, tmp_path, capsys, damage):
    raw = raw_copy(shared_data, tmp_path / "raw")
    name = damage(raw / "mnist")
    out = tmp_path / "out"
    assert prep.main(["--raw", str(raw), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and name in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def _truncated_archive(fsdd: Path) -> str:
    archive = next(fsdd.glob("*.tar.gz"))
    archive.write_bytes(archive.read_bytes()[:3_000_000])
    return archive.name


def _truncated_recording(fsdd: Path) -> str:
    (fsdd / "recordings").mkdir()
    with tarfile.open(next(fsdd.glob("*.tar.gz"))) as tar:  # loose recordings, one of them cut short
        tar.extractall(fsdd / "recordings", filter="data")
    archive = next(fsdd.glob("*.tar.gz"))
    archive.unlink()
    wav = next((fsdd / "recordings").rglob("3_theo_7.wav"))
    wav.write_bytes(wav.read_bytes()[:100])
    return "3_theo_7.wav"


def _not_a_recording(fsdd: Path) -> str:
    _truncated_recording(fsdd)
    next((fsdd / "recordings").rglob("5_lucas_1.wav")).write_text("not a wav file")
    return "wav"  # whichever of the two bad files is read first is named


@pytest.mark.parametrize("damage", [_truncated_archive, _truncated_recording, _not_a_recording])
def test_damaged_fsdd_input_is_named_and_nothing_is_written(prep, shared_data, tmp_path, capsys, damage):
    raw = raw_copy(shared_data, tmp_path / "raw", without="fsdd")
    shutil.copytree(shared_data / "fsdd", raw / "fsdd")
    name = damage(raw / "fsdd")
    out = tmp_path / "out"
    assert prep.main(["--raw", str(raw), "--out", str(out), "--n-train", "50", "--n-test", "50", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and name in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_missing_folders_are_named(prep, shared_data, tmp_path):
    raw = raw_copy(shared_data, tmp_path / "raw", without="esc50")
    with pytest.raises(prep.PrepareError, match=r"esc50.*--generated-noise"):
        prep.prepare(raw, tmp_path / "out", n_train=50, n_test=50, progress=False)
    raw = raw_copy(shared_data, tmp_path / "raw2", without="mnist")
    with pytest.raises(prep.PrepareError, match=r"raw2[/\\]mnist: MNIST folder not found"):
        prep.prepare(raw, tmp_path / "out", n_train=50, n_test=50, progress=False)
    with pytest.raises(prep.PrepareError, match="nobody"):
        prep.prepare(shared_data, tmp_path / "out", n_train=50, n_test=50, test_speakers=["nobody"], progress=False)
    assert not (tmp_path / "out").exists()


def esc50_copy(shared_data: Path, raw: Path) -> Path:
    """raw/esc50: a copy of clips.csv and links to the shared clips (so one can be replaced)."""
    esc50 = raw / "esc50"
    (esc50 / "audio").mkdir(parents=True)
    shutil.copy(shared_data / "esc50" / "clips.csv", esc50)
    for clip in (shared_data / "esc50" / "audio").iterdir():
        (esc50 / "audio" / clip.name).symlink_to(clip)
    return esc50


CLIP = "4-102844-A-49.wav"  # the last clip of the table


def _clips_not_utf8(esc50, monkeypatch):
    (esc50 / "clips.csv").write_bytes(b"\xff\xfefilename,target\n")
    return "clips.csv: cannot read the table ('utf-8' codec can't decode byte 0xff in position 0"


def _clips_short_line(esc50, monkeypatch):
    with open(esc50 / "clips.csv", "a") as f:
        f.write("4-999999-A-7.wav,7\n")
    return "clips.csv line 52: fewer fields than its header"


def _clips_header_only(esc50, monkeypatch):
    (esc50 / "clips.csv").write_text((esc50 / "clips.csv").read_text().splitlines()[0] + "\n")
    return "clips.csv: lists no clips"


def _clip_garbage_header(esc50, monkeypatch):
    data = bytearray((esc50 / "audio" / CLIP).read_bytes())
    data[22] = 255  # 255 channels: scipy divides by zero
    (esc50 / "audio" / CLIP).unlink()
    (esc50 / "audio" / CLIP).write_bytes(bytes(data))
    return f"{CLIP}: not a readable WAV file (integer division or modulo by zero)"


def _clip_unreadable(esc50, monkeypatch):
    read_bytes = Path.read_bytes

    def refuse(path):
        if path.name == CLIP:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", refuse)
    return f"{CLIP}: cannot read the noise clip (Permission denied)"


@pytest.mark.parametrize("damage", [_clips_not_utf8, _clips_short_line, _clips_header_only, _clip_garbage_header,
                                    _clip_unreadable])
def test_unreadable_esc50_input_is_named_in_one_line(prep, shared_data, tmp_path, capsys, monkeypatch, damage):
    raw = raw_copy(shared_data, tmp_path / "raw", without="esc50")
    message = damage(esc50_copy(shared_data, raw), monkeypatch)
    assert prep.main(["--raw", str(raw), "--out", str(tmp_path / "out"), "--n-train", "50", "--n-test", "50",
                      "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def _recording_is_a_folder(fsdd, monkeypatch):
    (fsdd / "recordings" / "3_theo_7.wav").mkdir(parents=True)
    return "3_theo_7.wav: cannot read the recording (Is a directory)"


def _recording_is_a_broken_link(fsdd, monkeypatch):
    (fsdd / "recordings").mkdir()
    (fsdd / "recordings" / "3_theo_7.wav").symlink_to(fsdd / "moved")
    return "3_theo_7.wav: cannot read the recording (No such file or directory)"


def _recording_is_silent(fsdd, monkeypatch):
    (fsdd / "recordings").mkdir()
    scipy.io.wavfile.write(fsdd / "recordings" / "0_jackson_0.wav", 8000, np.zeros(4000, np.int16))
    return "0_jackson_0.wav: recording is silent"  # its pairs would hear the noise alone


def _fsdd_is_a_symlink_loop(fsdd, monkeypatch):
    shutil.rmtree(fsdd)
    fsdd.symlink_to(fsdd)
    return f"{fsdd}: not a folder (a file, or a broken or looping symbolic link)"


def _fsdd_cannot_be_listed(fsdd, monkeypatch):
    iterdir = Path.iterdir

    def refuse(path):
        if path == fsdd:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return iterdir(path)

    monkeypatch.setattr(Path, "iterdir", refuse)
    return f"{fsdd}: cannot list the folder (Permission denied)"


@pytest.mark.parametrize("damage", [_recording_is_a_folder, _recording_is_a_broken_link, _recording_is_silent,
                                    _fsdd_is_a_symlink_loop, _fsdd_cannot_be_listed])
def test_unreadable_fsdd_input_is_named_in_one_line(prep, shared_data, tmp_path, capsys, monkeypatch, damage):
    raw = raw_copy(shared_data, tmp_path / "raw", without="fsdd")
    archive = next((shared_data / "fsdd").glob("*.tar.gz"))
    (raw / "fsdd").mkdir()
    (raw / "fsdd" / archive.name).symlink_to(archive)
    message = damage(raw / "fsdd", monkeypatch)
    assert prep.main(["--raw", str(raw), "--out", str(tmp_path / "out"), "--n-train", "50", "--n-test", "50",
                      "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("option, message", [(dict(seed=-1), "seed must be a non-negative integer"),
                                             (dict(snr_db=float("nan")), "snr_db must be a finite number")]
                         + [(dict(inter_share=v), "inter_share must be a number from 0 to 1")
                            for v in (float("nan"), -0.1, 1.5, "0.5", None)]
                         + [(dict(n_train=0), r"n_train must be a whole number of at least 1, got 0"),
                            (dict(n_test=-1), r"n_test must be a whole number of at least 1, got -1"),
                            (dict(n_train=2.5), r"n_train must be a whole number of at least 1, got 2.5")]
                         + [(dict(image_energy=v), r"image_energy must be in \(0, 1\]")
                            for v in (float("nan"), 0.0, 1.5)]
                         + [(dict(test_speakers=[]), "test_speakers must name at least one, got none"),
                            (dict(test_noise_classes=()), "test_noise_classes must name at least one, got none")])
def test_bad_option_is_refused_before_any_work(prep, shared_data, tmp_path, monkeypatch, option, message):
    monkeypatch.setattr(prep, "load_noise_clips", None)  # the first input read: not reached
    with pytest.raises(prep.PrepareError, match=message):
        prep.prepare(shared_data, tmp_path / "out", **{**SMALL, **option})
    assert not (tmp_path / "out").exists()


def test_bad_inter_share_on_the_command_line(prep, shared_data, tmp_path, capsys):
    assert prep.main(["--raw", str(shared_data), "--out", str(tmp_path / "out"), "--inter-share", "nan"]) == 2
    assert capsys.readouterr().err.strip() == "error: inter_share must be a number from 0 to 1, got nan"
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------- inter-modality pairs

# sha256 of the files that the published recipe's random choices decide (seed 0, SMALL), as
# built before --inter-share existed: share 0 must stay the published benchmark. (The
# arrays also depend on the PCA's and the FFT's floating point, so they are compared with a
# build of the same machine, below.)
PUBLISHED_BUILD = {
    "train_pairs.csv": "22881f11d8e630d53e6bc1b8d3d5c82338337c9bc5f34e7a719d4e177e08f531",
    "test_pairs.csv": "a555d8fecc4f9f61f02a6b235fbecaad8e2ab858956f0b317de4848ae41de768",
    "train_labels.npy": "f1589ae223504eb90761537ed158f641a398633a4411763764c032cbc5cd4690",
    "test_labels.npy": "724a6b34daed6b875da8dc6768bb14e37192e9f9f01d886bf097bd0abcd8820b",
}


def test_share_zero_is_the_published_build(built):
    out, metadata = built
    assert {name: hashlib.sha256((out / name).read_bytes()).hexdigest() for name in PUBLISHED_BUILD} == PUBLISHED_BUILD
    assert "inter_share" not in metadata and avmnist.inter_share(out) == 0.0
    assert not any(m.any() for m in avmnist.inter_pairs(out, valid_size=100).values())


@pytest.fixture(scope="module")
def half(prep, shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("avmnist-half") / "data"
    return out, prep.prepare(shared_data, out, seed=0, inter_share=0.5, **SMALL)


def test_inter_pairs_carry_the_label_only_in_their_relation(built, half):
    published, _ = built
    out, metadata = half
    assert metadata["inter_share"] == 0.5 == avmnist.inter_share(out)
    assert metadata["inter_pairs"]["counts"] == {"train": 300, "test": 100}
    for split in ("train", "test"):
        pairs, labels = read_pairs(out / f"{split}_pairs.csv"), np.load(out / f"{split}_labels.npy")
        mnist_digits = np.load(published / f"{split}_labels.npy")  # the digit each MNIST image shows
        images, mnist_images = np.load(out / f"image/{split}_data.npy"), np.load(published / f"image/{split}_data.npy")
        assert np.array_equal(labels, mnist_digits)  # the labels keep their published distribution
        for i, p in enumerate(pairs):
            label, image, shown, heard = (int(p[k]) for k in ("label", "image_index", "digit_shown", "digit_heard"))
            assert label == labels[i] and int(p["recording"].split("_")[0]) == heard  # the recording says it
            assert mnist_digits[image] == shown and np.array_equal(images[i], mnist_images[image])  # the image shows it
            if p["inter"] == "1":
                assert (shown + heard) % 10 == label
            else:
                assert p["inter"] == "0" and image == i and shown == heard == label
        inter = np.array([p["inter"] == "1" for p in pairs])
        assert inter.sum() == len(pairs) // 2
        # neither modality alone predicts the label on inter pairs: as often right as chance
        shown = np.array([int(p["digit_shown"]) for p in pairs])[inter]
        assert abs(np.mean(shown == labels[inter]) - 0.1) < 0.08
    speakers = {s: {p["speaker"] for p in read_pairs(out / f"{s}_pairs.csv")} for s in ("train", "test")}
    assert speakers["train"].isdisjoint(speakers["test"]) and speakers["test"] == {"yweweler"}
    masks = avmnist.inter_pairs(out, valid_size=100)
    assert [len(masks[s]) for s in ("train", "valid", "test")] == [500, 100, 200]
    everything = np.concatenate([masks["train"], masks["valid"]])
    assert everything.tolist() == [p["inter"] == "1" for p in read_pairs(out / "train_pairs.csv")]


def test_the_shares_are_nested_by_the_seed(prep, shared_data, half, tmp_path):
    """Everything but the pairing is as published: the same noise clips and offsets for every pair."""
    out, _ = half
    full = tmp_path / "full"
    prep.prepare(shared_data, full, seed=0, inter_share=1.0, **SMALL)
    for split in ("train", "test"):
        a, b = read_pairs(out / f"{split}_pairs.csv"), read_pairs(full / f"{split}_pairs.csv")
        assert all(p["inter"] == "1" for p in b)
        assert [(p["noise_clip"], p["noise_offset"]) for p in a] == [(p["noise_clip"], p["noise_offset"]) for p in b]


def test_output_over_the_raw_folder_is_refused(prep, shared_data, tmp_path):
    raw = raw_copy(shared_data, tmp_path / "raw")
    for out in (raw, raw / "mnist"):  # replacing them would delete MNIST
        with pytest.raises(prep.PrepareError, match=r"is or holds the input .*mnist"):
            prep.prepare(raw, out, overwrite=True, **SMALL)
    assert len(list((raw / "mnist").iterdir())) == 4


def test_generated_noise_is_recorded(prep, shared_data, tmp_path):
    raw = raw_copy(shared_data, tmp_path / "raw", without="esc50")
    metadata = prep.prepare(raw, tmp_path / "out", n_train=100, n_test=50, generated_noise=True, progress=False)
    assert metadata["noise"]["source"] == "generated" and metadata["inputs"]["esc50"] is None
    pairs = read_pairs(tmp_path / "out" / "test_pairs.csv")
    assert {int(p["noise_class"]) for p in pairs} <= set(range(40, 50))


# ---------------------------------------------------------------------- --download


@pytest.fixture
def mirror(shared_data, tmp_path):
    """A loopback HTTP server over a copy of the shared raw files; ``serve(handler)`` starts it."""
    root = tmp_path / "mirror"
    for name in ("mnist", "fsdd", "esc50"):
        shutil.copytree(shared_data / name, root / name)
    servers = []

    def serve(handler=http.server.SimpleHTTPRequestHandler) -> str:
        quiet = type("Quiet", (handler,), {"log_message": lambda self, *args: None})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(quiet, directory=str(root)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield root, serve
    for server in servers:
        server.shutdown()
        server.server_close()


def test_download_fetches_and_verifies_everything(prep, mirror, tmp_path, monkeypatch):
    root, serve = mirror
    monkeypatch.setenv(prep.MIRROR_ENV, serve())
    raw, out = tmp_path / "raw", tmp_path / "out"
    assert prep.main(["--raw", str(raw), "--out", str(out), "--download", "--n-train", "100",
                      "--n-test", "50", "--no-progress"]) == 0
    assert sorted(p.name for p in (raw / "mnist").iterdir()) == sorted(p.name for p in (root / "mnist").iterdir())
    assert len(list((raw / "esc50" / "audio").glob("*.wav"))) == 50
    inputs = json.loads((out / "metadata.json").read_text())["inputs"]
    assert all(f["published"] for f in inputs["mnist"].values()) and inputs["fsdd"]["published"]
    assert all(c["published"] for c in inputs["esc50"]["clips"].values())
    assert not [p for p in raw.rglob(".*")]  # no temporary left behind


def test_download_rejects_a_wrong_checksum(prep, mirror, shared_data, tmp_path):
    root, serve = mirror
    clip = root / "esc50" / "audio" / "4-102844-A-49.wav"
    damaged = bytearray(clip.read_bytes())
    damaged[5000:5010] = b"0123456789"
    clip.write_bytes(bytes(damaged))
    raw = raw_copy(shared_data, tmp_path / "raw", without="esc50")  # only the clips to fetch
    with pytest.raises(prep.PrepareError, match="4-102844-A-49.wav.*sha256"):
        prep.prepare(raw, tmp_path / "out", download_missing=True, mirror=serve(), progress=False)
    assert not (raw / "esc50" / "audio" / "4-102844-A-49.wav").exists()
    assert not [p for p in raw.rglob(".*")] and not (tmp_path / "out").exists()


class Truncating(http.server.SimpleHTTPRequestHandler):
    """Promises the whole file in Content-Length, then sends half of it."""

    def copyfile(self, source, outputfile):
        data = source.read()
        outputfile.write(data[: len(data) // 2])


def test_download_rejects_a_truncated_transfer(prep, mirror, shared_data, tmp_path):
    _, serve = mirror
    raw = raw_copy(shared_data, tmp_path / "raw")
    (raw / "mnist" / "train-labels-idx1-ubyte.gz").unlink()  # the one file to fetch
    with pytest.raises(prep.PrepareError, match="train-labels-idx1-ubyte.gz: truncated download"):
        prep.prepare(raw, tmp_path / "out", download_missing=True, mirror=serve(Truncating), progress=False)
    assert not (raw / "mnist" / "train-labels-idx1-ubyte.gz").exists()
    assert not [p for p in raw.rglob(".*")]
