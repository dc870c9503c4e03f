#!/usr/bin/env python
"""Build the fastMRI knee benchmark of I2M2: per-slice magnitude and phase, four fastMRI+ labels.

Input (``--raw``): the fastMRI knee single-coil HDF5 files (``singlecoil_train/``,
``singlecoil_val/``, any folder depth; a data-use agreement is needed, see
https://fastmri.med.nyu.edu/). Each holds ``kspace`` complex64 ``(slices, 640, W)``, W
usually 368. Multi-coil files (``kspace`` ``(slices, coils, 640, W)``) are refused: their
root-sum-of-squares image has no phase, and a phase-keeping coil combination needs coil
sensitivity maps, which the published pipeline did not use.

Annotations (``--annotations``): the fastMRI+ folder (github.com/microsoft/fastmri-plus,
``Annotations/``) with ``knee.csv`` (``file,slice,study_level,x,y,width,height,label``) and
``knee_file_list.csv`` (every volume the radiologists reviewed, one name a line).

Per slice, as published:
  * k-space centred in a 640 x 400 grid: zero-filled to width 400 (W < 400); a wider volume
    (W > 400) keeps its central 400 columns, so that every image has the same pixel grid
    (it loses its outermost frequencies, and is listed in ``metadata.json``);
  * the complex image: centred inverse 2-D FFT (``fftshift(ifft2(ifftshift(k)))``, orthonormal);
  * the central 320 x 320 crop; magnitude and phase (radians, in [-pi, pi]).
  Magnitude is divided by its volume's largest value (kept per slice in ``slices.csv`` as
  ``scale``), so float16 keeps three significant digits of it.

Labels ``abnormal, meniscus_tear, acl, cartilage`` per slice, with the published rule on each
annotation's label string (whitespace collapsed first: the strings carry stray spaces, as in
``"Joint Effusion "``): a label containing "ACL" is ACL; else one containing "Meniscus Tear"
a meniscus tear; else one containing "cartilage" (any case) cartilage; any other label is
"abnormal". So, as published, ``abnormal`` means a finding other than the three named ones
(``--abnormal any`` makes it any finding). Study-level rows (``study_level == "Yes"``: whole
studies marked "artifact", with no slice) are image-quality notes, not findings: left out.
A slice with no annotation row in a reviewed volume is negative for all four; a volume never
reviewed (not in ``knee_file_list.csv``) is excluded: its silence says nothing.

Splits by volume (no volume in two splits): 70/15/15 of the volumes prepared, shuffled with
``--seed``. Class weights from the training split: per label the positive-class weight
``n_negative / n_positive`` (binary cross-entropy's ``pos_weight``) and scikit-learn's
balanced ``[negative, positive]`` weights (the published two-class cross-entropy's).

Output (``--out``, written atomically; an existing folder only with ``--overwrite``):
  train/ valid/ test/   magnitude.npy, phase.npy (N, 320, 320) float16 (``--dtype float32``),
                        labels.npy (N, 4) uint8
  slices.csv            split, index, file, slice, scale, and the four labels of every row
  metadata.json         choices, counts, prevalence, class weights, files left out and why

The raw files are read volume by volume (one volume in memory, tens of MB), each volume's
result saved at once in ``<out>.partial/``; a run that stops (an error, Ctrl-C) keeps them,
and the next run continues from there, but only if ``<out>.partial/fingerprint.json`` (the
``--raw`` folder, the names, sizes and times of its ``.h5`` files, the settings that shape a
volume's result, the package version) matches: otherwise it refuses, saying what differs
(delete the folder, or ``--restart``). A file that is corrupt or unexpected, a folder that
cannot be listed, a broken or looping link under ``--raw``, stops the run with one line naming
it (``--on-error stop``, the default), or is left out and listed in ``metadata.json`` and in
the last line printed (``--on-error skip``). Before any volume is read, the folder above
``--out`` must take a new file and have room for the output and its per-volume copies.

    python data_scripts/prepare_fastmri.py --raw ~/fastmri/knee --annotations ../shared/data/fastmri_plus \
        --out data/fastmri
"""

from __future__ import annotations

import csv
import glob
import json
import os
import shutil
import stat
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np
from sklearn.utils.class_weight import compute_class_weight
from tqdm.auto import tqdm

from i2m2kit.io import (PrepareError, allocated_memmap, as_prepare_error, atomic_path, check_free_space,
                        check_input, check_output, fingerprint, fingerprint_differences, prepare_output,
                        script_main, script_parser, sha256, write_json_atomic)

FORMAT_VERSION = 1
KSPACE_SHAPE = (640, 400)  # the published zero-filled k-space grid
CROP = (320, 320)  # the published image crop (fastMRI's reconstruction size)
LABELS = ("abnormal", "meniscus_tear", "acl", "cartilage")
SPLITS = (("train", 0.70), ("valid", 0.15), ("test", 0.15))
OUTPUTS = ("metadata.json", "slices.csv", *(name for name, _ in SPLITS))  # all --overwrite may replace
ABNORMAL = ("other", "any")  # published: a finding other than the three named ones; or any finding
DTYPES = ("float16", "float32")
ANNOTATION_COLUMNS = ("file", "slice", "study_level", "label")
DATA_USE = "the fastMRI knee files need a data-use agreement: https://fastmri.med.nyu.edu/"


class VolumeError(PrepareError):
    """One raw volume that cannot be used; with --on-error skip the run goes on without it."""


# ---------------------------------------------------------------------- annotations


def finding(label: str, abnormal: str = "other") -> set[str]:
    """The benchmark labels one fastMRI+ annotation label sets (the published rule)."""
    text = " ".join(label.split())  # stray spaces: "Joint Effusion ", "Bone- Subchondral edema"
    if "ACL" in text:
        named = "acl"
    elif "Meniscus Tear" in text:
        named = "meniscus_tear"
    elif "cartilage" in text.lower():
        named = "cartilage"
    else:
        return {"abnormal"}
    return {named, "abnormal"} if abnormal == "any" else {named}


def read_annotations(folder: Path, abnormal: str = "other") -> dict:
    """Reviewed volumes, per-slice labels of each, and counts, from ``knee.csv`` and ``knee_file_list.csv``."""
    folder = Path(folder)
    if folder.is_file():
        folder = folder.parent
    knee, file_list = folder / "knee.csv", folder / "knee_file_list.csv"
    for path in (knee, file_list):
        if not path.is_file():
            raise PrepareError(f"{path}: not found; --annotations must be the fastMRI+ folder holding knee.csv "
                               f"and knee_file_list.csv (github.com/microsoft/fastmri-plus, Annotations/)")
    # one volume name a line; the published file ends with a title line, "Knee data": not a name
    lines = [line.strip() for line in file_list.read_text().splitlines()]
    reviewed = {Path(line).stem for line in lines if line and not any(c.isspace() for c in line)}
    if not reviewed:
        raise PrepareError(f"{file_list}: no volume names")
    slices: dict[str, dict[int, set[str]]] = defaultdict(lambda: defaultdict(set))
    label_counts: Counter = Counter()
    study_level = 0
    with open(knee, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        missing = [c for c in ANNOTATION_COLUMNS if c not in header]
        if missing:
            raise PrepareError(f"{knee}: no column {', '.join(map(repr, missing))} (columns: {', '.join(header)})")
        col = {c: header.index(c) for c in ANNOTATION_COLUMNS}
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise PrepareError(f"{knee}, line {line}: {len(row)} fields, the header has {len(header)}")
            volume = row[col["file"]].strip()
            label = row[col["label"]]
            if row[col["study_level"]].strip().lower() == "yes":
                study_level += 1  # a note on the whole study ("artifact"), not a finding on a slice
                continue
            try:
                index = int(row[col["slice"]])
            except ValueError:
                raise PrepareError(f"{knee}, line {line}: slice {row[col['slice']]!r} is not a number") from None
            slices[volume][index] |= finding(label, abnormal)
            label_counts[" ".join(label.split())] += 1
            reviewed.add(volume)  # an annotated volume was reviewed, listed or not
    return {"reviewed": reviewed, "slices": slices, "label_counts": dict(label_counts),
            "study_level_rows": study_level,
            "sources": {p.name: {"path": str(p.resolve()), "sha256": sha256(p)} for p in (knee, file_list)}}


def slice_labels(findings: dict[int, set[str]], n_slices: int) -> np.ndarray:
    """(n_slices, 4) 0/1 labels of a reviewed volume; slices without annotations are negative."""
    out = np.zeros((n_slices, len(LABELS)), dtype=np.uint8)
    for index, names in findings.items():
        if 0 <= index < n_slices:
            out[index] = [name in names for name in LABELS]
    return out


# ---------------------------------------------------------------------- k-space to image


def centre_fit(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Zero-fill or crop the last two axes to ``shape`` keeping the centre (index n // 2) in place.

    Used on k-space, whose centre (the zero frequency) sits at index n // 2 in fastMRI's files.
    """
    out = array
    for axis, size in zip((-2, -1), shape):
        n = out.shape[axis]
        if n < size:
            before = size // 2 - n // 2
            pad = [(0, 0)] * out.ndim
            pad[axis] = (before, size - n - before)
            out = np.pad(out, pad)
        elif n > size:
            start = n // 2 - size // 2
            out = np.take(out, np.arange(start, start + size), axis=axis)
    return out


def centre_crop(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The central ``shape`` of the last two axes (fastMRI's convention: start at (n - size) // 2)."""
    h, w = array.shape[-2:]
    top, left = (h - shape[0]) // 2, (w - shape[1]) // 2
    return array[..., top:top + shape[0], left:left + shape[1]]


def kspace_to_image(kspace: np.ndarray, grid: tuple[int, int] = KSPACE_SHAPE,
                    crop: tuple[int, int] = CROP) -> np.ndarray:
    """Complex images ``(..., crop)`` of centred k-space ``(..., H, W)``, as published."""
    k = centre_fit(kspace, grid)
    axes = (-2, -1)
    image = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=axes), norm="ortho"), axes=axes)
    return centre_crop(image, crop).astype(np.complex64)


def read_volume(path: Path, dtype: str) -> dict:
    """One volume's magnitude and phase images and what was done to it; VolumeError if unusable."""
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise VolumeError(f"{path}: not a readable HDF5 file ({e})") from None
    with f:
        if "kspace" not in f:
            raise VolumeError(f"{path}: no dataset 'kspace' (it has {', '.join(sorted(f.keys())) or 'nothing'})")
        kspace = f["kspace"]
        if kspace.ndim == 4:
            raise VolumeError(
                f"{path}: multi-coil k-space {kspace.shape} (slices, coils, H, W); this benchmark uses the "
                f"single-coil files (knee_singlecoil_*): a coil combination that keeps the phase needs coil "
                f"sensitivity maps, which the published pipeline did not use")
        if kspace.ndim != 3 or not np.issubdtype(kspace.dtype, np.complexfloating):
            raise VolumeError(f"{path}: 'kspace' is {kspace.dtype} {kspace.shape}; expected complex (slices, H, W)")
        n, height, width = kspace.shape
        if n == 0 or height < CROP[0] or width < CROP[1] // 2:
            raise VolumeError(f"{path}: 'kspace' of shape {kspace.shape} is too small for a {CROP} image")
        images = np.empty((n, *CROP), dtype=np.complex64)
        try:
            for s in range(n):  # slice by slice: one slice of k-space in memory at a time
                images[s] = kspace_to_image(kspace[s])
        except OSError as e:
            raise VolumeError(f"{path}: 'kspace' slice {s} cannot be read ({e})") from None
        acquisition = f.attrs.get("acquisition", "")
    magnitude = np.abs(images)
    scale = float(magnitude.max())
    if not np.isfinite(magnitude).all() or scale <= 0:
        raise VolumeError(f"{path}: 'kspace' gives an image that is all zero or not finite")
    return {"magnitude": (magnitude / scale).astype(dtype), "phase": np.angle(images).astype(dtype),
            "scale": scale, "kspace_shape": [height, width],
            "acquisition": acquisition.decode() if isinstance(acquisition, bytes) else str(acquisition)}


# ---------------------------------------------------------------------- the whole run


def assign_splits(volumes: Sequence[str], seed: int) -> dict[str, str]:
    """volume -> split, 70/15/15 of the volumes after a seeded shuffle (each split at least one)."""
    n = len(volumes)
    if n < len(SPLITS):
        raise PrepareError(f"{n} usable reviewed volume(s): at least {len(SPLITS)} are needed "
                           f"for train, valid and test")
    order = [volumes[i] for i in np.random.default_rng(seed).permutation(n)]
    n_valid = max(1, round(n * SPLITS[1][1]))
    n_test = max(1, round(n * SPLITS[2][1]))
    n_train = n - n_valid - n_test
    names = ["train"] * n_train + ["valid"] * n_valid + ["test"] * n_test
    return dict(zip(order, names))


def class_weights(labels: np.ndarray) -> dict[str, dict[str, float]]:
    """Per label, from the training split: ``pos_weight`` (n_neg / n_pos) and balanced [neg, pos] weights.

    A label with one class only in training gets weight 1 (nothing to balance)."""
    out = {}
    for j, name in enumerate(LABELS):
        y = labels[:, j]
        if y.min() == y.max():
            out[name] = {"pos_weight": 1.0, "balanced": [1.0, 1.0]}
            continue
        balanced = compute_class_weight("balanced", classes=np.array([0, 1]), y=y)
        out[name] = {"pos_weight": float(balanced[1] / balanced[0]), "balanced": [float(w) for w in balanced]}
    return out


def raw_volumes(raw: Path) -> tuple[dict[str, Path], dict[str, str]]:
    """name -> path of every ``*.h5`` under ``raw`` (linked folders followed), and the entries
    that could not be read, path under ``raw`` -> why: pathlib's rglob would pass over them in
    silence. A name found twice is an error."""
    if not raw.is_dir():
        raise PrepareError(f"{raw}: no such folder; {DATA_USE}")
    paths, unreadable = [], {}
    info = raw.stat()
    seen = {(info.st_dev, info.st_ino): raw}  # folders read, to stop at a link back to one
    folders = [raw]
    while folders:
        folder = folders.pop()
        try:
            with os.scandir(folder) as listing:
                entries = [folder / e.name for e in listing]
        except OSError as e:
            unreadable[folder.relative_to(raw).as_posix()] = f"folder cannot be listed ({e.strerror})"
            continue
        for path in entries:
            try:
                info = path.stat()  # through links
            except OSError as e:
                unreadable[path.relative_to(raw).as_posix()] = (
                    "a broken symbolic link" if path.is_symlink() and isinstance(e, FileNotFoundError)
                    else f"cannot be read ({e.strerror})")
                continue
            if stat.S_ISDIR(info.st_mode):
                if (info.st_dev, info.st_ino) in seen:
                    unreadable[path.relative_to(raw).as_posix()] = f"a link back to {seen[info.st_dev, info.st_ino]}"
                    continue
                seen[info.st_dev, info.st_ino] = path
                folders.append(path)
            elif path.suffix == ".h5":
                paths.append(path)
    found: dict[str, Path] = {}
    for path in sorted(paths):
        if path.stem in found:
            raise PrepareError(f"{path}: volume {path.stem} is also at {found[path.stem]}")
        found[path.stem] = path
    if not found and not unreadable:
        raise PrepareError(f"{raw}: no .h5 files; {DATA_USE}")
    return found, dict(sorted(unreadable.items()))


def kspace_slices(path: Path) -> int:
    """A volume's number of slices, from its header; 0 if it cannot be read (read_volume says why)."""
    try:
        with h5py.File(path, "r") as f:
            return int(f["kspace"].shape[0])
    except (OSError, KeyError, IndexError, TypeError):
        return 0


def stored_fingerprint(partial: Path) -> dict | None:
    """What made the volumes in ``<out>.partial``, as recorded there; None if there is no record."""
    try:
        stored = json.loads((partial / "fingerprint.json").read_text())
    except (OSError, ValueError):
        return None
    return stored if isinstance(stored, dict) else None


def prepare(raw: str | Path, annotations: str | Path, out: str | Path, seed: int = 0, dtype: str = "float16",
            abnormal: str = "other", on_error: str = "stop", overwrite: bool = False, restart: bool = False,
            progress: bool = True) -> dict:
    """Read ``raw`` and ``annotations``, write the prepared folder ``out``; return its metadata.
    ``restart``: discard the volumes an earlier run left in ``<out>.partial`` instead of reusing them."""
    for option, value in (("raw", raw), ("annotations", annotations), ("out", out)):
        if not str(value).strip():  # Path("") would be the working folder
            raise PrepareError(f"{option} (--{option}): an empty path; name a folder")
    raw, out = Path(raw), Path(out)
    if dtype not in DTYPES or abnormal not in ABNORMAL or on_error not in ("stop", "skip"):
        raise ValueError(f"dtype in {DTYPES}, abnormal in {ABNORMAL}, on_error in ('stop', 'skip'); "
                         f"got {dtype!r}, {abnormal!r}, {on_error!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise PrepareError(f"seed must be a non-negative integer, got {seed!r}")  # numpy says so only at the end
    check_input(raw, "--raw")
    check_input(Path(annotations), "--annotations")
    with as_prepare_error():  # an unwritable, mounted or looping --out is said now, not after every volume is read
        prepare_output(out)
    check_output(out, overwrite, [raw, annotations], OUTPUTS)
    notes = read_annotations(Path(annotations), abnormal)
    files, unreadable = raw_volumes(raw)
    if unreadable and on_error == "stop":  # nothing is left out unsaid
        (entry, why), more = next(iter(unreadable.items())), len(unreadable) - 1
        raise PrepareError(f"{raw / entry}: {why}{f' (and {more} more unreadable entries)' if more else ''}; "
                           f"make it readable, or pass --on-error skip to leave it out")
    for entry, why in unreadable.items():
        tqdm.write(f"skipping {raw / entry}: {why}", file=sys.stderr)
    reviewed = sorted(v for v in files if v in notes["reviewed"])
    not_reviewed = sorted(v for v in files if v not in notes["reviewed"])

    # Each volume's result is kept in <out>.partial as soon as it is made: nothing is lost if the
    # run stops, and the next run picks up from there if the fingerprint of what made them matches.
    partial = out.parent / f"{out.name}.partial"
    settings = {"format_version": FORMAT_VERSION, "dtype": dtype, "abnormal": abnormal,
                "kspace_shape": KSPACE_SHAPE, "crop": CROP,
                "annotations_sha256": sorted(s["sha256"] for s in notes["sources"].values())}
    made_by = fingerprint(raw, settings, reads=[glob.escape(p.relative_to(raw).as_posix()) for p in files.values()])
    if restart:
        shutil.rmtree(partial, ignore_errors=True)
    elif any(partial.glob("volumes/*.npz")):  # a reuse: checked
        stored = stored_fingerprint(partial)
        differences = (fingerprint_differences(stored, made_by) if stored is not None
                       else ["no fingerprint.json: left by an older version of this script"])
        if differences:
            raise PrepareError(f"{partial}: volumes prepared from other input or settings ({'; '.join(differences)}); "
                               f"delete it or pass --restart to start afresh")

    # room for the output and, until the end, each volume's copy in <out>.partial: said before the work
    slices = {v: kspace_slices(files[v]) for v in reviewed}
    todo = [v for v in reviewed if not (partial / "volumes" / f"{v}.npz").exists()]
    per_slice = 2 * np.dtype(dtype).itemsize * CROP[0] * CROP[1]  # magnitude and phase
    need = sum(slices[v] for v in todo) * per_slice + sum(slices.values()) * (per_slice + len(LABELS) + 100)
    with as_prepare_error():
        check_free_space(out.parent, need, f"{sum(slices.values()):,} slices of {dtype} magnitude and phase "
                                           f"(the output, and its per-volume copies in {partial.name})")
    (partial / "volumes").mkdir(parents=True, exist_ok=True)
    write_json_atomic(made_by, partial / "fingerprint.json")

    skipped: dict[str, str] = {}
    bar = tqdm(reviewed, desc="volumes", unit="volume", disable=not progress)
    for name in bar:
        done = partial / "volumes" / f"{name}.npz"
        if done.exists():
            continue
        try:
            volume = read_volume(files[name], dtype)
        except VolumeError as e:
            if on_error == "stop":
                kept = len(list((partial / "volumes").glob("*.npz")))
                raise VolumeError(f"{e}. {kept} volume(s) already prepared are kept in {partial}: run again to "
                                  f"continue, or pass --on-error skip to leave such files out") from None
            skipped[name] = str(e)
            tqdm.write(f"skipping {e}", file=sys.stderr)
            continue
        labels = slice_labels(notes["slices"].get(name, {}), len(volume["magnitude"]))
        try:
            with atomic_path(done) as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, magnitude=volume["magnitude"], phase=volume["phase"], labels=labels,
                             scale=np.float64(volume["scale"]), kspace_shape=np.array(volume["kspace_shape"]))
        except OSError as e:  # a disk filled by someone else meanwhile: one line, the volumes done kept
            raise PrepareError(f"{done}: cannot be written ({e.strerror or e}); the volumes prepared are kept "
                               f"in {partial}: free some space and run again to continue") from None

    prepared = sorted(p.stem for p in (partial / "volumes").glob("*.npz") if p.stem in reviewed)
    split_of = assign_splits(prepared, seed)
    metadata = write_output(partial, prepared, split_of, notes, progress)
    metadata.update({
        "format_version": FORMAT_VERSION,
        "source": {"raw": str(raw.resolve()), "annotations": notes["sources"]},
        "kspace": {"grid": list(KSPACE_SHAPE), "fft": "fftshift(ifft2(ifftshift(k)), norm='ortho'), k-space centred at "
                   "index n // 2; zero-filled (W < 400) or centrally cropped (W > 400) to the grid"},
        "image": {"crop": list(CROP), "dtype": dtype,
                  "magnitude": "|image| / scale, scale = the volume's largest |image| (slices.csv)",
                  "phase": "angle(image) in radians, [-pi, pi]"},
        "labels": list(LABELS),
        "label_rule": ("whitespace collapsed; 'ACL' in label -> acl; else 'Meniscus Tear' -> meniscus_tear; "
                       "else 'cartilage' (any case) -> cartilage; else abnormal"
                       + ("; every finding also sets abnormal" if abnormal == "any" else
                          " (as published: abnormal = a finding other than the three named ones)")),
        "abnormal": abnormal,
        "study_level_rows_ignored": notes["study_level_rows"],
        "annotation_labels": notes["label_counts"],
        "split_seed": seed, "split_fractions": dict(SPLITS),
        "volumes_not_reviewed_excluded": not_reviewed,
        "volumes_skipped": skipped,
        "raw_entries_skipped_unreadable": unreadable,
    })
    with atomic_path(out) as tmp:
        (partial / "output").replace(tmp)
        (tmp / "metadata.json").write_text(json.dumps(metadata, indent=2, default=float))
    shutil.rmtree(partial)
    return metadata


def write_output(partial: Path, volumes: list[str], split_of: dict[str, str], notes: dict,
                 progress: bool) -> dict:
    """Gather the volumes into one array per split and modality in ``<partial>/output``; return counts."""
    target = partial / "output"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir()
    try:
        return _write_output(target, partial, volumes, split_of, notes, progress)
    except OSError as e:  # a full disk: one line naming the file, the half-written output removed, the volumes kept
        shutil.rmtree(target, ignore_errors=True)
        raise PrepareError(f"{e.filename or target}: cannot be written ({e.strerror or e}); the volumes prepared "
                           f"are kept in {partial}: free some space and run again to continue") from None


def _write_output(target: Path, partial: Path, volumes: list[str], split_of: dict[str, str], notes: dict,
                  progress: bool) -> dict:
    lengths, dtype = {}, None
    for v in volumes:  # one file open at a time: there may be thousands
        with np.load(partial / "volumes" / f"{v}.npz") as volume:
            lengths[v] = len(volume["labels"])
            dtype = dtype or volume["magnitude"].dtype
    rows, labels_of, wide, outside = [], {}, {}, {}
    counts = {}
    for split, _ in SPLITS:
        members = [v for v in volumes if split_of[v] == split]
        n = sum(lengths[v] for v in members)
        shape = (n, *CROP)
        (target / split).mkdir()
        arrays = {m: allocated_memmap(target / split / f"{m}.npy", dtype, shape) for m in ("magnitude", "phase")}
        labels = np.zeros((n, len(LABELS)), dtype=np.uint8)
        start = 0
        for v in tqdm(members, desc=f"writing {split}", unit="volume", disable=not progress, leave=False):
            with np.load(partial / "volumes" / f"{v}.npz") as volume:
                k = len(volume["labels"])
                for m in arrays:
                    arrays[m][start:start + k] = volume[m]
                labels[start:start + k] = volume["labels"]
                scale = float(volume["scale"])
                if volume["kspace_shape"][1] > KSPACE_SHAPE[1]:
                    wide[v] = [int(x) for x in volume["kspace_shape"]]
            beyond = sum(1 for s in notes["slices"].get(v, {}) if s >= k)
            if beyond:
                outside[v] = beyond
            rows += [{"split": split, "index": start + s, "file": v, "slice": s, "scale": scale,
                      **{name: int(x) for name, x in zip(LABELS, labels[start + s])}} for s in range(k)]
            start += k
        for array in arrays.values():
            array.flush()
        del arrays
        np.save(target / split / "labels.npy", labels)
        labels_of[split] = labels
        counts[split] = {"volumes": len(members), "slices": n,
                         "positive_slices": {name: int(labels[:, j].sum()) for j, name in enumerate(LABELS)}}
    with open(target / "slices.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["split", "index", "file", "slice", "scale", *LABELS])
        writer.writeheader()
        writer.writerows(rows)
    all_labels = np.concatenate(list(labels_of.values()))
    return {"counts": counts,
            "prevalence": {name: float(all_labels[:, j].mean()) for j, name in enumerate(LABELS)},
            "class_weights": class_weights(labels_of["train"]),
            "volumes_kspace_cropped_to_400": wide,
            "annotated_slices_beyond_volume": outside}


@script_main
def main(argv: Sequence[str] | None = None) -> int:
    parser = script_parser(__doc__, "folder to write the prepared benchmark to")
    # paths kept as given: Path("") would silently be the working folder
    parser.add_argument("--raw", required=True, help="folder of fastMRI knee single-coil .h5 files (any depth)")
    parser.add_argument("--annotations", required=True, help="fastMRI+ folder with knee.csv and knee_file_list.csv")
    parser.add_argument("--seed", type=int, default=0, help="seed of the volume-level split (default 0)")
    parser.add_argument("--dtype", choices=DTYPES, default="float16", help="storage of magnitude and phase")
    parser.add_argument("--abnormal", choices=ABNORMAL, default="other",
                        help="'other' (published): a finding other than meniscus tear, ACL, cartilage; "
                             "'any': any finding")
    parser.add_argument("--on-error", choices=("stop", "skip"), default="stop",
                        help="a corrupt or unexpected file, or an unreadable entry under --raw, stops the run "
                             "(default; volumes done are kept) or is left out and listed")
    parser.add_argument("--restart", action="store_true",
                        help="discard the volumes an interrupted run left in <out>.partial instead of continuing")
    args = parser.parse_args(argv)
    meta = prepare(args.raw, args.annotations, args.out, seed=args.seed, dtype=args.dtype, abnormal=args.abnormal,
                   on_error=args.on_error, overwrite=args.overwrite, restart=args.restart,
                   progress=not args.no_progress)
    c = meta["counts"]
    skipped = [f"{v}.h5" for v in meta["volumes_skipped"]] + list(meta["raw_entries_skipped_unreadable"])
    left_out = (f"; {len(meta['volumes_not_reviewed_excluded'])} volume(s) not reviewed by fastMRI+ excluded"
                + (f"; skipped (--on-error skip, reasons in metadata.json): {', '.join(skipped[:10])}"
                   f"{f' and {len(skipped) - 10} more' if len(skipped) > 10 else ''}" if skipped else ""))
    if meta["annotated_slices_beyond_volume"]:
        print(f"warning: annotations name slices past the end of {len(meta['annotated_slices_beyond_volume'])} "
              f"volume(s) (listed in metadata.json): are these the files fastMRI+ annotated?", file=sys.stderr)
    print(f"wrote {args.out}: " + ", ".join(f"{s} {c[s]['volumes']} volumes / {c[s]['slices']} slices" for s in c)
          + "; prevalence " + ", ".join(f"{k} {v:.3f}" for k, v in meta["prevalence"].items()) + left_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
