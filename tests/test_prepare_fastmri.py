"""data_scripts/prepare_fastmri.py on miniature files in the published layout, with the real
fastMRI+ annotations as the label source."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import load_data_script
from fastmri_files import (ANNOTATED, EXPECTED_LABEL, NOT_REVIEWED, REVIEWED_NO_FINDING, annotation_rows,
                           centred_fft, expected_labels, miniature_raw, phantom, write_volume)


@pytest.fixture(scope="module")
def prep():
    return load_data_script("prepare_fastmri")


@pytest.fixture(scope="module")
def annotations(shared_data) -> Path:
    return shared_data / "fastmri_plus"


@pytest.fixture(scope="module")
def raw(tmp_path_factory, annotations):
    return miniature_raw(tmp_path_factory, annotations / "knee.csv")


@pytest.fixture(scope="module")
def built(prep, raw, annotations, tmp_path_factory):
    out = tmp_path_factory.mktemp("fastmri") / "prepared"
    meta = prep.prepare(raw[0], annotations, out, progress=False)
    with open(out / "slices.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return out, meta, rows


def linked_raw(raw_folder: Path, target: Path, names) -> Path:
    """A raw folder of links to some of the miniature files, so that others can be added."""
    target.mkdir(parents=True)
    for path in raw_folder.rglob("*.h5"):
        if path.stem in names:
            (target / path.name).symlink_to(path)
    return target


def test_miniature_files_have_the_published_layout(raw):
    folder, volumes = raw
    path = next(folder.rglob(f"{ANNOTATED[0]}.h5"))
    with h5py.File(path) as f:
        assert f["kspace"].dtype == np.complex64 and f["kspace"].shape == (volumes[ANNOTATED[0]], 640, 368)
        for name in ("reconstruction_esc", "reconstruction_rss"):
            assert f[name].dtype == np.float32 and f[name].shape == (volumes[ANNOTATED[0]], 320, 320)
        assert b"<ismrmrdHeader" in f["ismrmrd_header"][()]
        assert {"acquisition", "max", "norm", "patient_id"} <= set(f.attrs)


def test_every_annotation_label_maps_as_published(prep, annotations):
    labels = {r["label"] for r in annotation_rows(annotations / "knee.csv") if r["study_level"] == "No"}
    assert labels == set(EXPECTED_LABEL)  # the real file's strings, stray spaces included
    for label, expected in EXPECTED_LABEL.items():
        assert prep.finding(label) == {expected}, label
        assert prep.finding(label, abnormal="any") == {expected, "abnormal"}, label


def test_file_list_title_line_is_not_a_volume(prep, annotations):
    notes = prep.read_annotations(annotations)
    assert "Knee data" not in notes["reviewed"] and "file1000000" in notes["reviewed"]
    assert notes["study_level_rows"] == 13  # whole-study "artifact" notes: not slice findings


def test_inverse_fft_round_trip(prep):
    """k-space already 640 x 400: the image comes back exactly, then its central 320 x 320."""
    image = phantom(np.random.default_rng(1), 640, 400)
    got = prep.kspace_to_image(centred_fft(image))
    np.testing.assert_allclose(got, image[160:480, 40:360], atol=1e-5 * np.abs(image).max())


@pytest.mark.parametrize("width, dx, expected_dx", [(368, 0, 0), (368, 46, 50), (368, -23, -25), (420, 42, 40)])
def test_crop_geometry(prep, width, dx, expected_dx):
    """A point dy rows and dx columns from the centre of a 640 x W image lands dy rows and
    dx * 400 / W columns from the centre of the 320 x 320 crop: zero-filling (W < 400) or
    cropping (W > 400) k-space resamples the columns onto a 400-wide grid of the same field of view."""
    dy = 30
    image = np.zeros((640, width), dtype=complex)
    image[320 + dy, width // 2 + dx] = 1.0
    got = np.abs(prep.kspace_to_image(centred_fft(image)))
    assert got.shape == (320, 320)
    assert np.unravel_index(got.argmax(), got.shape) == (160 + dy, 160 + expected_dx)


def test_prepared_labels_match_the_annotation_rows(built, raw, annotations):
    out, meta, rows = built
    _, volumes = raw
    by_volume: dict[str, list[dict]] = {}
    for r in rows:
        by_volume.setdefault(r["file"], []).append(r)
    assert set(by_volume) == set(ANNOTATED) | set(REVIEWED_NO_FINDING)  # never reviewed: excluded
    assert meta["volumes_not_reviewed_excluded"] == sorted(NOT_REVIEWED)
    arrays = {s: np.load(out / s / "labels.npy") for s in ("train", "valid", "test")}
    for volume, vrows in by_volume.items():
        vrows.sort(key=lambda r: int(r["slice"]))
        assert [int(r["slice"]) for r in vrows] == list(range(volumes[volume]))
        expected = expected_labels(annotations / "knee.csv", volume, volumes[volume])
        from_csv = np.array([[int(r[k]) for k in ("abnormal", "meniscus_tear", "acl", "cartilage")] for r in vrows])
        from_npy = np.stack([arrays[r["split"]][int(r["index"])] for r in vrows])
        np.testing.assert_array_equal(from_csv, expected, err_msg=volume)
        np.testing.assert_array_equal(from_npy, expected, err_msg=volume)
        if volume in REVIEWED_NO_FINDING:
            assert not expected.any()  # reviewed, nothing found: negatives
    assert all(expected_labels(annotations / "knee.csv", v, volumes[v]).any() for v in ANNOTATED)


def test_splits_are_by_volume_with_a_seed(prep, built):
    out, meta, rows = built
    split_of = {}
    for r in rows:
        assert split_of.setdefault(r["file"], r["split"]) == r["split"]  # no volume in two splits
    assert sorted(split_of.values()).count("train") == 5 and meta["counts"]["valid"]["volumes"] == 1
    names = sorted(split_of)
    assert prep.assign_splits(names, 0) == split_of
    assert prep.assign_splits(names, 0) == prep.assign_splits(names, 0)
    assert any(prep.assign_splits(names, s) != split_of for s in range(1, 5))
    many = prep.assign_splits([f"v{i}" for i in range(1000)], 3)
    assert [list(many.values()).count(s) for s in ("train", "valid", "test")] == [700, 150, 150]


def test_arrays_are_the_magnitude_and_phase_of_the_kspace(built, raw):
    """Recomputed here from the file: zero-fill 368 -> 400 columns, centred inverse FFT, crop."""
    out, meta, rows = built
    row = next(r for r in rows if r["file"] == ANNOTATED[-1] and r["slice"] == "3")
    with h5py.File(next(raw[0].rglob(f"{ANNOTATED[-1]}.h5"))) as f:
        k = f["kspace"][3]
    k = np.pad(k, ((0, 0), (16, 16)))
    image = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k), norm="ortho"))[160:480, 40:360]
    magnitude = np.load(out / row["split"] / "magnitude.npy", mmap_mode="r")[int(row["index"])]
    phase = np.load(out / row["split"] / "phase.npy", mmap_mode="r")[int(row["index"])]
    assert magnitude.dtype == np.float16 and magnitude.shape == (320, 320)
    scale = float(row["scale"])
    np.testing.assert_allclose(magnitude * scale, np.abs(image), atol=2e-3 * scale)
    tissue = np.abs(image) > 0.1 * scale
    assert np.abs(np.exp(1j * phase[tissue]) - np.exp(1j * np.angle(image[tissue]))).max() < 5e-3
    everything = np.load(out / row["split"] / "magnitude.npy", mmap_mode="r")
    assert float(everything.max()) == 1.0 and float(everything.min()) >= 0


def test_class_weights_come_from_the_training_split(built):
    out, meta, _ = built
    train = np.load(out / "train" / "labels.npy")
    assert train.dtype == np.uint8 and train.shape[1] == 4
    for j, name in enumerate(("abnormal", "meniscus_tear", "acl", "cartilage")):
        positives = train[:, j].sum()
        weights = meta["class_weights"][name]
        if positives:
            assert weights["pos_weight"] == pytest.approx((len(train) - positives) / positives)
            assert weights["balanced"][1] == pytest.approx(len(train) / (2 * positives))
        else:
            assert weights["pos_weight"] == 1.0
    assert json.loads((out / "metadata.json").read_text())["class_weights"] == meta["class_weights"]


def test_multicoil_file_is_refused_or_skipped(prep, raw, annotations, tmp_path):
    folder = linked_raw(raw[0], tmp_path / "raw", set(ANNOTATED[:3]))
    kspace = centred_fft(phantom(np.random.default_rng(2), 640, 368))[None, None].repeat(2, axis=1)  # 1 slice, 2 coils
    with h5py.File(folder / "file1000000.h5", "w") as f:
        f.create_dataset("kspace", data=kspace.astype(np.complex64))
    with pytest.raises(prep.PrepareError, match=r"file1000000\.h5: multi-coil k-space \(1, 2, 640, 368\)"):
        prep.prepare(folder, annotations, tmp_path / "out", progress=False)
    meta = prep.prepare(folder, annotations, tmp_path / "out", on_error="skip", progress=False)
    assert list(meta["volumes_skipped"]) == ["file1000000"]
    assert "multi-coil" in meta["volumes_skipped"]["file1000000"]
    assert sum(c["volumes"] for c in meta["counts"].values()) == 3


def test_a_corrupt_file_stops_the_run_and_the_next_run_continues(prep, raw, annotations, tmp_path, monkeypatch, capsys):
    folder = linked_raw(raw[0], tmp_path / "raw", set(ANNOTATED) | set(REVIEWED_NO_FINDING))
    (folder / "file1002570.h5").write_bytes(b"\x89HDF\r\n" + b"garbage" * 100)  # sorts last of the reviewed
    out = tmp_path / "prepared"
    args = ["--raw", str(folder), "--annotations", str(annotations), "--out", str(out), "--no-progress"]
    assert prep.main(args) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "file1002570.h5: not a readable HDF5 file" in error
    assert "7 volume(s) already prepared are kept" in error
    assert not out.exists()
    assert len(list((tmp_path / "prepared.partial" / "volumes").glob("*.npz"))) == 7

    read = []
    real_read = prep.read_volume
    monkeypatch.setattr(prep, "read_volume", lambda path, dtype: read.append(path.stem) or real_read(path, dtype))
    assert prep.main([*args, "--on-error", "skip"]) == 0
    assert read == ["file1002570"]  # the seven volumes already prepared are not read again
    meta = json.loads((out / "metadata.json").read_text())
    assert list(meta["volumes_skipped"]) == ["file1002570"]
    assert sum(c["volumes"] for c in meta["counts"].values()) == 7
    assert not (tmp_path / "prepared.partial").exists()


def test_existing_output_needs_overwrite(prep, raw, annotations, tmp_path):
    folder = linked_raw(raw[0], tmp_path / "raw", set(ANNOTATED[:3]))
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    # a folder this script did not write is never replaced, --overwrite or not
    for overwrite in (False, True):
        with pytest.raises(prep.PrepareError, match="keep.txt, which this script never writes"):
            prep.prepare(folder, annotations, out, overwrite=overwrite, progress=False)
    assert (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    (out / "slices.csv").write_text("an earlier run")
    with pytest.raises(prep.PrepareError, match="no metadata.json, so it is not an output of this script"):
        prep.prepare(folder, annotations, out, overwrite=True, progress=False)
    (out / "metadata.json").write_text("{}")  # an earlier output: replaced only with --overwrite
    with pytest.raises(prep.PrepareError, match="already exists; pass --overwrite"):
        prep.prepare(folder, annotations, out, progress=False)
    prep.prepare(folder, annotations, out, overwrite=True, progress=False)
    assert (out / "metadata.json").read_text() != "{}" and (out / "slices.csv").read_text() != "an earlier run"


def test_negative_seed_and_output_over_the_input_are_refused_at_once(prep, raw, annotations, tmp_path):
    with pytest.raises(prep.PrepareError, match="seed must be a non-negative integer, got -1"):
        prep.prepare(raw[0], annotations, tmp_path / "out", seed=-1, progress=False)
    folder = linked_raw(raw[0], tmp_path / "raw", set(ANNOTATED[:3]))
    with pytest.raises(prep.PrepareError, match="is or holds the input"):  # replacing it would delete the files
        prep.prepare(folder, annotations, folder, overwrite=True, progress=False)
    assert len(list(folder.iterdir())) == 3
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_missing_annotations_and_empty_raw_folder_name_the_path(prep, raw, annotations, tmp_path):
    with pytest.raises(prep.PrepareError, match=r"knee\.csv: not found; --annotations"):
        prep.prepare(raw[0], tmp_path, tmp_path / "out", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(prep.PrepareError, match=r"no \.h5 files; .*https://fastmri\.med\.nyu\.edu/"):
        prep.prepare(tmp_path / "empty", annotations, tmp_path / "out", progress=False)


def test_missing_kspace_dataset_is_named(prep, tmp_path):
    path = write_volume(tmp_path / "file1000001.h5", phantom(np.random.default_rng(3))[None])
    with h5py.File(path, "a") as f:
        del f["kspace"]
    with pytest.raises(prep.VolumeError, match=r"file1000001\.h5: no dataset 'kspace' \(it has ismrmrd_header"):
        prep.read_volume(path, "float16")


def test_a_wider_volume_is_kept_and_listed(prep, raw, annotations, tmp_path):
    """W > 400: the central 400 k-space columns are used (same pixel grid as the others), and
    the volume is named in metadata.json, not dropped. Its annotations past its few slices are counted."""
    folder = linked_raw(raw[0], tmp_path / "raw", set(ANNOTATED[:3]))
    write_volume(folder / "file1000002.h5", phantom(np.random.default_rng(4), 640, 420)[None].repeat(2, axis=0))
    meta = prep.prepare(folder, annotations, tmp_path / "out", progress=False)
    assert meta["volumes_kspace_cropped_to_400"] == {"file1000002": [640, 420]}
    assert meta["annotated_slices_beyond_volume"]["file1000002"] > 0
    assert sum(c["slices"] for c in meta["counts"].values()) == 2 + sum(
        n for v, n in raw[1].items() if v in ANNOTATED[:3])
