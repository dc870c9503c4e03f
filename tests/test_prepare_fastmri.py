"""data_scripts/prepare_fastmri.py on miniature files in the published layout, with the real
fastMRI+ annotations as the label source."""

from __future__ import annotations

import csv
import errno
import json
import os
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from fastmri_files import (ANNOTATED, EXPECTED_LABEL, NOT_REVIEWED, REVIEWED_NO_FINDING, annotation_rows,
                           centred_fft, expected_labels, miniature_raw, phantom, write_volume)
from faults import bad_output_location, disk_full, run_script, script_fixture, small_tmpfs


prep = script_fixture("prepare_fastmri")


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


# ---------------------------------------------------------------------- nothing skipped unsaid, reuse checked, room


def volumes_read(prep, monkeypatch) -> list[str]:
    """The volumes the script reads from now on, in order (to tell whether any work was done)."""
    read, real_read = [], prep.read_volume
    monkeypatch.setattr(prep, "read_volume", lambda path, dtype: read.append(path.stem) or real_read(path, dtype))
    return read


def arguments(raw: Path, annotations: Path, out: Path, *more: str) -> list[str]:
    return ["--raw", str(raw), "--annotations", str(annotations), "--out", str(out), "--no-progress", *more]


def test_an_unreadable_folder_stops_the_run_or_is_skipped_and_listed(prep, raw, annotations, tmp_path, monkeypatch,
                                                                      capsys):
    folder = linked_raw(raw[0], tmp_path / "raw", set(ANNOTATED[:3]))
    locked = linked_raw(raw[0], folder / "locked", set(REVIEWED_NO_FINDING))
    real_scandir = os.scandir

    def scandir(path="."):  # as for a folder without read permission (which root, running the tests here, reads)
        if isinstance(path, (str, os.PathLike)) and Path(path) == locked:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path)
    monkeypatch.setattr(os, "scandir", scandir)
    read = volumes_read(prep, monkeypatch)
    out = tmp_path / "out"
    assert prep.main(arguments(folder, annotations, out)) == 2  # it was skipped in silence: 3 of 5 volumes, exit 0
    assert capsys.readouterr().err == (f"error: {locked}: folder cannot be listed (Permission denied); make it "
                                       f"readable, or pass --on-error skip to leave it out\n")
    assert read == [] and sorted(p.name for p in tmp_path.iterdir()) == ["raw"]
    assert prep.main(arguments(folder, annotations, out, "--on-error", "skip")) == 0
    printed = capsys.readouterr()
    assert printed.out.count("\n") == 1
    assert printed.out.endswith("; skipped (--on-error skip, reasons in metadata.json): locked\n")
    assert f"skipping {locked}: folder cannot be listed (Permission denied)" in printed.err
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["raw_entries_skipped_unreadable"] == {"locked": "folder cannot be listed (Permission denied)"}
    assert sum(c["volumes"] for c in meta["counts"].values()) == 3


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads a folder without permissions")
def test_a_folder_without_read_permission_is_named(prep, raw, annotations, tmp_path, capsys):
    folder = linked_raw(raw[0], tmp_path / "raw", set(ANNOTATED[:3]))
    locked = linked_raw(raw[0], folder / "locked", set(REVIEWED_NO_FINDING))
    locked.chmod(0)
    try:
        assert prep.main(arguments(folder, annotations, tmp_path / "out")) == 2
    finally:
        locked.chmod(0o755)
    assert capsys.readouterr().err.startswith(f"error: {locked}: folder cannot be listed (Permission denied); ")


def test_broken_and_looping_links_are_named_and_linked_folders_are_read(prep, raw, annotations, tmp_path, capsys):
    folder = linked_raw(raw[0], tmp_path / "raw", set(ANNOTATED[:3]))
    (folder / "more").symlink_to(linked_raw(raw[0], tmp_path / "elsewhere", set(REVIEWED_NO_FINDING)))
    (folder / "loop").symlink_to(folder / "loop")
    (folder / "file1000001.h5").symlink_to(tmp_path / "gone.h5")
    (folder / "sub").mkdir()
    (folder / "sub" / "up").symlink_to(folder)
    out = tmp_path / "out"
    assert prep.main(arguments(folder, annotations, out)) == 2
    assert capsys.readouterr().err == (f"error: {folder / 'file1000001.h5'}: a broken symbolic link (and 2 more "
                                       f"unreadable entries); make it readable, or pass --on-error skip to leave "
                                       f"it out\n")
    assert prep.main(arguments(folder, annotations, out, "--on-error", "skip")) == 0
    assert capsys.readouterr().out.endswith(
        "; skipped (--on-error skip, reasons in metadata.json): file1000001.h5, loop, sub/up\n")
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["raw_entries_skipped_unreadable"] == {
        "file1000001.h5": "a broken symbolic link", "loop": "cannot be read (Too many levels of symbolic links)",
        "sub/up": f"a link back to {folder}"}
    assert sum(c["volumes"] for c in meta["counts"].values()) == 5  # the linked folder's two volumes are read


def test_a_skipped_corrupt_file_is_named_in_the_last_line(prep, raw, annotations, tmp_path, capsys):
    folder = linked_raw(raw[0], tmp_path / "raw", set(ANNOTATED[:3]))
    (folder / "file1002570.h5").write_bytes(b"garbage")
    assert prep.main(arguments(folder, annotations, tmp_path / "out", "--on-error", "skip")) == 0
    assert capsys.readouterr().out.endswith("; skipped (--on-error skip, reasons in metadata.json): file1002570.h5\n")


def test_an_interrupted_run_continues_only_from_the_same_input_and_settings(prep, raw, annotations, tmp_path,
                                                                            monkeypatch, capsys):
    first = linked_raw(raw[0], tmp_path / "first", set(ANNOTATED[:3]))
    (first / "file1002570.h5").write_bytes(b"garbage")  # sorts last: the run stops after the three others
    out, partial = tmp_path / "prepared", tmp_path / "prepared.partial"
    assert prep.main(arguments(first, annotations, out)) == 2
    assert len(list(partial.glob("volumes/*.npz"))) == 3
    capsys.readouterr()
    # another folder of the same file names: its volumes were added to the first's
    second = linked_raw(raw[0], tmp_path / "second", set(ANNOTATED[:3]))
    write_volume(second / "file1002570.h5", phantom(np.random.default_rng(5))[None].repeat(2, axis=0))
    read = volumes_read(prep, monkeypatch)
    assert prep.main(arguments(second, annotations, out)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {partial}: volumes prepared from other input or settings (")
    assert f"raw: '{first.resolve()}' -> '{second.resolve()}'" in err
    assert err.endswith("); delete it or pass --restart to start afresh\n")
    # other settings, or a raw file changed since, are refused too, saying so
    assert prep.main(arguments(first, annotations, out, "--dtype", "float32")) == 2
    assert "(dtype: 'float16' -> 'float32'); delete it" in capsys.readouterr().err
    os.utime(first / "file1002570.h5", ns=(0, 0))
    assert prep.main(arguments(first, annotations, out)) == 2
    assert "(raw files (names, sizes or times) changed (4 -> 4 files)); delete it" in capsys.readouterr().err
    assert read == [] and not out.exists()
    # a folder of an older version, without a fingerprint, is not taken on trust
    (partial / "fingerprint.json").unlink()
    assert prep.main(arguments(second, annotations, out)) == 2
    assert "(no fingerprint.json: left by an older version of this script)" in capsys.readouterr().err
    # --restart starts afresh: every volume read from the second folder
    assert prep.main(arguments(second, annotations, out, "--restart")) == 0
    assert sorted(read) == sorted([*ANNOTATED[:3], "file1002570"])
    assert json.loads((out / "metadata.json").read_text())["source"]["raw"] == str(second.resolve())
    assert not partial.exists()


def test_no_room_for_the_output_is_said_before_any_volume_is_read(prep, raw, annotations, tmp_path, monkeypatch,
                                                                  capsys):
    folder = linked_raw(raw[0], tmp_path / "raw", set(ANNOTATED[:3]))
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=10 * 2**20))
    read = volumes_read(prep, monkeypatch)
    assert prep.main(arguments(folder, annotations, tmp_path / "out")) == 2
    slices = sum(raw[1][v] for v in ANNOTATED[:3])
    need = slices * (2 * 2 * 320 * 320) * 2 / 2**20  # float16 magnitude and phase, the output and each volume's copy
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path}: 10 MiB free, but {slices} slices of float16 magnitude and phase (the "
                          f"output, and its per-volume copies in out.partial) needs about {need:,.0f} MiB; ")
    assert err.count("\n") == 1 and read == [] and sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


def test_a_disk_that_fills_while_writing_stops_in_one_line_and_the_next_run_continues(prep, raw, annotations, tmp_path,
                                                                                      monkeypatch, capsys):
    """The arrays are memory-mapped: without their blocks allocated first, a full disk killed the
    process with SIGBUS (exit 135, no message)."""
    folder = linked_raw(raw[0], tmp_path / "raw", set(ANNOTATED[:3]))
    real = getattr(os, "posix_fallocate", None)
    monkeypatch.setattr(os, "posix_fallocate", disk_full, raising=False)
    out, partial = tmp_path / "out", tmp_path / "out.partial"
    assert prep.main(arguments(folder, annotations, out)) == 2
    assert capsys.readouterr().err == (
        f"error: {partial / 'output' / 'train' / 'magnitude.npy'}: cannot be written (No space left on device); the "
        f"volumes prepared are kept in {partial}: free some space and run again to continue\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.partial", "raw"]  # no temporary folder
    assert sorted(p.name for p in partial.iterdir()) == ["fingerprint.json", "volumes"]  # no half-written output
    if real is None:
        monkeypatch.delattr(os, "posix_fallocate")
    else:
        monkeypatch.setattr(os, "posix_fallocate", real)
    read = volumes_read(prep, monkeypatch)
    assert prep.main(arguments(folder, annotations, out)) == 0
    assert read == [] and not partial.exists()


def test_a_real_full_disk_is_said_in_one_line_not_by_a_bus_error(raw, annotations, tmp_path):
    """On a 20 MiB tmpfs (root only; the tests above cover the same without one): room for the
    three volumes' copies (15 MB), not for the output as well."""
    folder = linked_raw(raw[0], tmp_path / "raw", set(ANNOTATED[:3]))
    with small_tmpfs(tmp_path / "disk", "20m") as disk:
        args = arguments(folder, annotations, disk / "out")
        checked = run_script("prepare_fastmri", args)  # the check before the work
        assert checked.returncode == 2 and checked.stderr.startswith(f"error: {disk}: 20 MiB free, but "), checked.stderr
        filled = run_script("prepare_fastmri", args, lie_about_room=True)  # the disk fills while writing
        assert filled.returncode == 2, (filled.returncode, filled.stderr)  # a bus error: -7
        assert filled.stderr.endswith(": cannot be written (No space left on device); the volumes prepared are kept "
                                      f"in {disk / 'out.partial'}: free some space and run again to continue\n")
        assert [p.name for p in disk.iterdir()] == ["out.partial"]
        assert sorted(p.name for p in (disk / "out.partial").iterdir()) == ["fingerprint.json", "volumes"]


@pytest.mark.parametrize("case", ["unwritable parent", "mount point", "--out a link loop", "--raw a link loop",
                                  "--annotations a link loop"])
def test_output_and_input_locations_are_checked_before_any_work(prep, raw, annotations, tmp_path, monkeypatch, capsys,
                                                               case):
    folder = linked_raw(raw[0], tmp_path / "raw", set(ANNOTATED[:3]))
    parent = tmp_path / "parent"
    parent.mkdir()
    out, loop = parent / "out", tmp_path / "loop"
    given = {"raw": folder, "annotations": annotations}
    message = bad_output_location(case, out, monkeypatch)
    if message is None:
        loop.symlink_to(loop)
        option = case.split()[0]
        given[option[2:]] = loop
        message = f"{loop}: cannot be read (Too many levels of symbolic links) ({option})"
    monkeypatch.setattr(prep, "read_annotations", lambda *a: pytest.fail("the input was read before the checks"))
    assert prep.main(arguments(given["raw"], given["annotations"], out)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {message}"), err
    assert "loop" in err.lower() or "loop" not in case
    assert sorted(p.name for p in parent.iterdir()) == (["out"] if case == "--out a link loop" else [])


@pytest.mark.parametrize("option", ["--raw", "--annotations", "--out"])
def test_an_empty_path_is_refused_naming_the_option(prep, raw, annotations, tmp_path, capsys, option):
    given = dict(zip(("--raw", "--annotations", "--out"), (str(raw[0]), str(annotations), str(tmp_path / "out"))))
    given[option] = ""  # an unset variable in a shell script: not the working folder
    assert prep.main([*(x for kv in given.items() for x in kv), "--no-progress"]) == 2
    assert capsys.readouterr().err == f"error: {option[2:]} ({option}): an empty path; name a folder\n"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("seed", [1.5, True, float("nan")])
def test_a_seed_that_is_not_a_whole_number_is_refused_at_once(prep, raw, annotations, tmp_path, monkeypatch, seed):
    read = volumes_read(prep, monkeypatch)  # numpy refused it, but only after every volume was read
    with pytest.raises(prep.PrepareError, match=re.escape(f"seed must be a non-negative integer, got {seed!r}")):
        prep.prepare(raw[0], annotations, tmp_path / "out", seed=seed, progress=False)
    assert read == [] and list(tmp_path.iterdir()) == []
