#!/usr/bin/env python
"""Build the PhysioNet/CinC Challenge 2012 benchmark (in-hospital mortality of ICU patients).

Input (``--raw``), as PhysioNet publishes it: for each set X of ``a``, ``b``, ``c`` that is
there, ``set-X.tar.gz`` or the folder ``set-X/`` it extracts to (the folder is read when both
are present), holding one ``<RecordID>.txt`` per ICU stay, and ``Outcomes-X.txt``. A record is
lines ``Time,Parameter,Value`` after that header, ``Time`` as hh:mm since ICU admission over
the first 48 hours. Its first line gives the RecordID; the first line at 00:00 of each of Age,
Gender, Height, ICUType and Weight is a descriptor (Weight: the admission weight); every
other line is one measurement of one of the 37 series variables of SERIES, Weight included.
-1 means not measured. The outcomes
file has one line ``RecordID,SAPS-I,SOFA,Length_of_stay,Survival,In-hospital_death`` per
record.

Output (``--out``, a folder written atomically; an existing one only with ``--overwrite``),
one ``set-X.npz`` per set, rows in RecordID order, every value in the file's own units:

  record_id      (N,)          int64
  static         (N, 8)        float32, STATIC: age, gender, height, admission weight and the
                               ICU type one-hot; NaN where not measured
  static_mask    (N, 8)        uint8, 1 where measured
  series         (N, 48, 37)   float32, hour h holds the measurements taken in [h, h+1) hours
                               after admission (48:00, the last instant, joins hour 47): their
                               mean, or for Urine their sum (mL in the hour); NaN where none
  series_mask    (N, 48, 37)   uint8, 1 where the hour holds a measurement
  series_delta   (N, 48, 37)   float32, hours from the variable's last measurement at or
                               before hour h to the end of hour h (h + 1 from admission where
                               there is none yet): the gaps of GRU-D (Che et al., 2018)
  outcomes       (N, 5)        int32, OUTCOMES as in the outcomes file (SAPS-I and SOFA are
                               reference scores for comparison, never inputs)

and ``metadata.json``: the variables, units, plausibility ranges, binning, per set and
variable the measurements kept, not measured (-1) and implausible (out of RANGES: counted
and dropped, never kept), the inputs' checksums and whether they are the published ones.

No normalisation here: the statistics come from the training split of the task loader
(``i2m2kit.tasks.physionet2012``), so no test record informs them.

Bad input stops the script, before anything is written, with one line naming the file and
the line: a record without RecordID first, a RecordID that is not the file's name, an
unparseable or out-of-window time, an unparseable or infinite value, an unknown parameter, a
descriptor given twice, duplicate record IDs, an outcomes file that does not match the
records, a truncated archive.

``--download`` fetches the missing files of the sets named by ``--sets`` (default a, b and c)
from PhysioNet (or ``--mirror``) and checks each against PhysioNet's SHA256SUMS.txt, and set
A's records and outcomes against their published content as well.

    python data_scripts/prepare_physionet2012.py --raw ../shared/data/physionet2012 --out data/physionet2012
    python data_scripts/prepare_physionet2012.py --raw data/raw/physionet2012 --out data/physionet2012 --download
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from i2m2kit.io import (PrepareError, atomic_folder, check_free_space, check_output, fetch, prepare_output,
                        script_main, script_parser, sha256)

FORMAT_VERSION = 1
OUTPUTS = ("metadata.json", "set-?.npz")  # all --overwrite may replace
HOURS = 48
SETS = ("a", "b", "c")
URL = "https://physionet.org/files/challenge-2012/1.0.0/"
MIRROR_ENV = "I2M2KIT_PHYSIONET2012_MIRROR"
HEADER = "Time,Parameter,Value"
DESCRIPTORS = ("RecordID", "Age", "Gender", "Height", "ICUType", "Weight")
ICU_TYPES = ("coronary_care", "cardiac_surgery_recovery", "medical", "surgical")  # ICUType 1..4
STATIC = ("age", "gender", "height", "weight", *(f"icu_{t}" for t in ICU_TYPES))
OUTCOMES = ("SAPS-I", "SOFA", "Length_of_stay", "Survival", "In-hospital_death")
SUMMED = ("Urine",)  # output volumes add up within an hour; every other variable is averaged

# Series variable: (unit, lowest plausible, highest plausible). The ranges are wide adult
# physiological limits; they catch the file's recording errors (pH 735, Temp -17.8 degC,
# zero heart rates and pressures, K 22.9, heights of 4 m) and nothing a patient can have.
SERIES = {
    "Albumin": ("g/dL", 0.5, 7.0), "ALP": ("IU/L", 1, 5000), "ALT": ("IU/L", 1, 15000),
    "AST": ("IU/L", 1, 25000), "Bilirubin": ("mg/dL", 0.1, 80), "BUN": ("mg/dL", 1, 250),
    "Cholesterol": ("mg/dL", 10, 1000), "Creatinine": ("mg/dL", 0.1, 25),
    "DiasABP": ("mmHg", 1, 250), "FiO2": ("fraction", 0.21, 1.0), "GCS": ("points", 3, 15),
    "Glucose": ("mg/dL", 10, 1500), "HCO3": ("mmol/L", 1, 60), "HCT": ("%", 5, 75),
    "HR": ("bpm", 1, 300), "K": ("mEq/L", 1, 12), "Lactate": ("mmol/L", 0.1, 40),
    "Mg": ("mmol/L", 0.3, 10), "MAP": ("mmHg", 1, 300), "MechVent": ("0/1", 0, 1),
    "Na": ("mEq/L", 90, 200), "NIDiasABP": ("mmHg", 1, 250), "NIMAP": ("mmHg", 1, 300),
    "NISysABP": ("mmHg", 1, 350), "PaCO2": ("mmHg", 5, 200), "PaO2": ("mmHg", 10, 800),
    "pH": ("pH", 6.5, 8.0), "Platelets": ("cells/nL", 1, 2000), "RespRate": ("bpm", 1, 100),
    "SaO2": ("%", 20, 100), "SysABP": ("mmHg", 1, 350), "Temp": ("degC", 25, 45),
    "TroponinI": ("ug/L", 0.01, 100), "TroponinT": ("ug/L", 0.001, 100),
    "Urine": ("mL", 0, 10000), "WBC": ("cells/nL", 0.1, 500), "Weight": ("kg", 20, 300),
}
VARIABLES = tuple(SERIES)
VARIABLE_INDEX = {v: i for i, v in enumerate(VARIABLES)}
# Descriptors: (unit, lowest, highest); Gender and ICUType must be one of their codes.
STATIC_RANGES = {"Age": ("years", 15, 120), "Height": ("cm", 100, 230), "Weight": ("kg", 20, 300)}
CODES = {"Gender": (0, 1), "ICUType": (1, 2, 3, 4)}

# The published content of set A (what the PhysioNet files hold, however they are packed):
# the checksum of its records (RECORDS_DIGEST) and of its outcomes file.
PUBLISHED = {"a": {"records": "0c90af4bbb41c696c9a1228b365060193ae852fda62074dfa3fabd93f7ff3ba6",
                   "outcomes": "2613ea60ccda29f87571a7d6b09ad130858a8ccd66325bd073365925026883c2"}}
_TIME = re.compile(r"(\d{1,2}):(\d{2})")


# ---------------------------------------------------------------------- reading


@dataclass
class Record:
    record_id: int
    static: np.ndarray  # (8,) NaN where not measured
    minutes: np.ndarray  # (M,) of each measurement
    variables: np.ndarray  # (M,) index into VARIABLES
    values: np.ndarray  # (M,)


def _number(text: str, where: str, what: str) -> float:
    try:
        if "_" in text:  # float() reads "1_0" as 10
            raise ValueError(text)
        value = float(text)
    except ValueError:
        raise PrepareError(f"{where}: {what} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise PrepareError(f"{where}: {what} {text!r} is not finite")
    return value


def parse_record(text: str, name: str, counts: dict[str, dict[str, int]]) -> Record:
    """One record file; ``name`` names it in errors (``set-a.tar.gz:set-a/132539.txt``).

    ``counts[variable]`` gains the measurements ``kept``, ``not_measured`` and ``implausible``.
    """
    lines = [line.rstrip("\r") for line in text.split("\n")]  # not splitlines: \f and the like end no line here
    if lines[-1] == "":
        lines.pop()
    if not lines or lines[0].strip() != HEADER:
        raise PrepareError(f"{name}:1: expected the header {HEADER!r}, found "
                           + (repr(lines[0][:60]) if lines else "an empty file"))
    static = np.full(len(STATIC), np.nan)
    seen: set[str] = set()
    record_id = None
    minutes, variables, values = [], [], []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        where = f"{name}:{number}"
        fields = line.split(",")
        if len(fields) != 3:
            raise PrepareError(f"{where}: expected Time,Parameter,Value, found {line[:60]!r}")
        time, parameter, text_value = (f.strip() for f in fields)
        match = _TIME.fullmatch(time)
        if not match or int(match[2]) >= 60 or int(match[1]) * 60 + int(match[2]) > HOURS * 60:
            raise PrepareError(f"{where}: time {time!r} is not hh:mm within the first {HOURS} hours")
        minute = int(match[1]) * 60 + int(match[2])
        value = _number(text_value, where, parameter or "value")
        if record_id is None and parameter != "RecordID":
            raise PrepareError(f"{where}: the record has no RecordID (its first line must give it)")
        # the descriptors are the first of each name at 00:00 (interleaved there with the
        # measurements of minute 0); a later Weight is a measurement
        if parameter in DESCRIPTORS and minute == 0 and parameter not in seen:
            seen.add(parameter)
            if parameter == "RecordID":
                if value != int(value) or value < 0:
                    raise PrepareError(f"{where}: RecordID {text_value!r} is not a record number")
                record_id = int(value)
                if Path(name).stem.isdigit() and int(Path(name).stem) != record_id:
                    raise PrepareError(f"{where}: RecordID {record_id} is not the file's name")
            else:
                _descriptor(static, parameter, value, counts)
            continue
        if parameter in DESCRIPTORS and parameter != "Weight":
            raise PrepareError(f"{where}: descriptor {parameter} again, or not at 00:00")
        if parameter not in SERIES:
            raise PrepareError(f"{where}: unknown parameter {parameter!r} (expected one of the {len(SERIES)} "
                               f"series variables or the descriptors {', '.join(DESCRIPTORS)})")
        _, low, high = SERIES[parameter]
        if value == -1:
            counts[parameter]["not_measured"] += 1
        elif not low <= value <= high:
            counts[parameter]["implausible"] += 1
        else:
            counts[parameter]["kept"] += 1
            minutes.append(minute), variables.append(VARIABLE_INDEX[parameter]), values.append(value)
    if record_id is None:
        raise PrepareError(f"{name}: the record has no RecordID")
    return Record(record_id, static, np.array(minutes, np.int64), np.array(variables, np.int64),
                  np.array(values, np.float64))


def _descriptor(static: np.ndarray, parameter: str, value: float, counts: dict[str, dict[str, int]]) -> None:
    key = f"descriptor:{parameter}"
    if value == -1:
        counts[key]["not_measured"] += 1
        return
    if parameter in CODES:
        ok = value in CODES[parameter]
    else:
        _, low, high = STATIC_RANGES[parameter]
        ok = low <= value <= high
    if not ok:
        counts[key]["implausible"] += 1
        return
    counts[key]["kept"] += 1
    if parameter == "ICUType":
        first = STATIC.index(f"icu_{ICU_TYPES[0]}")
        static[first:first + len(ICU_TYPES)] = np.eye(len(ICU_TYPES))[int(value) - 1]
    else:
        static[STATIC.index(parameter.lower())] = value


def record_files(raw: Path, set_name: str) -> tuple[list[tuple[str, bytes]], str]:
    """The record files of one set, sorted by name: (name for errors, bytes) each, and where
    they were read from."""
    folder, archive = raw / f"set-{set_name}", raw / f"set-{set_name}.tar.gz"
    if folder.is_dir():
        files, path = [], folder
        try:  # an unreadable folder (listed first) or record is named
            names = sorted(p for p in folder.iterdir() if p.suffix == ".txt" and not p.name.startswith("."))
            for path in names:
                if not path.is_file():  # skipped, its stay would vanish (or its outcome be blamed): named
                    what = "a broken symbolic link" if path.is_symlink() and not path.exists() else (
                        "a folder" if path.is_dir() else "not a regular file")
                    raise PrepareError(f"{path}: named like a record, but {what}")
                files.append((str(path), path.read_bytes()))
        except OSError as e:
            raise PrepareError(f"{path}: cannot read it ({e.strerror or e})") from None
        return files, str(folder)
    if not archive.is_file():
        raise PrepareError(f"{folder}: neither this folder nor {archive.name} is there")
    try:  # the whole archive is read first: a truncated one fails before any record is parsed
        with tarfile.open(archive, "r:gz") as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()
                       if m.isfile() and m.name.endswith(".txt") and not Path(m.name).name.startswith(".")}
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise PrepareError(f"{archive}: not a readable .tar.gz archive ({e or type(e).__name__}; truncated?)") from None
    return [(f"{archive}:{n}", members[n]) for n in sorted(members)], str(archive)


def read_outcomes(file: Path) -> dict[int, tuple[int, tuple[int, ...]]]:
    """RecordID -> (line number, OUTCOMES) of an outcomes file."""
    if not file.is_file():
        raise PrepareError(f"{file}: not found (the outcomes of the set's records)")
    try:
        lines = [line.rstrip("\r") for line in file.read_text(errors="replace").split("\n")]
    except OSError as e:
        raise PrepareError(f"{file}: cannot read it ({e.strerror or e})") from None
    expected = ",".join(("RecordID", *OUTCOMES))
    if not lines or lines[0].strip() != expected:
        raise PrepareError(f"{file}:1: expected the header {expected!r}")
    out: dict[int, tuple[int, tuple[int, ...]]] = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split(",")
        if len(fields) != len(OUTCOMES) + 1:
            raise PrepareError(f"{file}:{number}: expected {len(OUTCOMES) + 1} fields, found {len(fields)}")
        numbers = []
        for column, text in zip(("RecordID", *OUTCOMES), fields):
            value = _number(text, f"{file}:{number}", column)
            if value != int(value):
                raise PrepareError(f"{file}:{number}: {column} {text!r} is not a whole number")
            numbers.append(int(value))
        if numbers[-1] not in (0, 1):
            raise PrepareError(f"{file}:{number}: In-hospital_death {numbers[-1]} is not 0 or 1")
        if numbers[0] in out:
            raise PrepareError(f"{file}:{number}: RecordID {numbers[0]} again (first on line {out[numbers[0]][0]})")
        out[numbers[0]] = (number, tuple(numbers[1:]))
    return out


# ---------------------------------------------------------------------- binning


def bin_hourly(record: Record) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values, mask, delta), each (48, 37), of one record (see the module docstring)."""
    shape = (HOURS, len(VARIABLES))
    hour = np.minimum(record.minutes // 60, HOURS - 1)
    total, count = np.zeros(shape), np.zeros(shape)
    np.add.at(total, (hour, record.variables), record.values)
    np.add.at(count, (hour, record.variables), 1)
    mask = count > 0
    summed = np.isin(np.arange(len(VARIABLES)), [VARIABLE_INDEX[v] for v in SUMMED])
    with np.errstate(invalid="ignore", divide="ignore"):
        values = np.where(summed, total, total / count)
    values[~mask] = np.nan
    last = np.full(shape, -np.inf)  # minute of the last measurement within each hour
    np.maximum.at(last, (hour, record.variables), record.minutes.astype(np.float64))
    last = np.maximum.accumulate(last, axis=0)  # ... at or before it
    end = np.arange(1, HOURS + 1, dtype=np.float64)[:, None]
    delta = np.where(np.isfinite(last), end - last / 60.0, end)
    return values, mask, delta


# ---------------------------------------------------------------------- checksums


def records_digest(files: Sequence[tuple[str, bytes]]) -> str:
    """A checksum of a set's records however they are packed: each file's name and content."""
    return sha256("".join(sorted(f"{Path(n.split(':')[-1]).name} {sha256(b)}\n" for n, b in files)).encode())


def _published_sums(base: str, raw: Path, progress: bool) -> dict[str, str]:
    """PhysioNet's SHA256SUMS.txt of the challenge (fetched into ``raw``, kept for the record)."""
    fetch([base + "SHA256SUMS.txt"], raw / "SHA256SUMS.txt", lambda path: None, progress)
    sums = {}
    for line in (raw / "SHA256SUMS.txt").read_text(errors="replace").splitlines():
        parts = line.split()
        if len(parts) == 2:
            sums[parts[1].lstrip("*./")] = parts[0].lower()
    return sums


def download(raw: Path, sets: Sequence[str], mirror: str | None = None, progress: bool = True) -> None:
    """Fetch into ``raw`` the archive and outcomes of each of ``sets`` that is missing, checked."""
    base = (mirror.rstrip("/") + "/") if mirror else URL
    wanted = [f for s in sets for f, there in ((f"set-{s}.tar.gz", (raw / f"set-{s}").is_dir() or (raw / f"set-{s}.tar.gz").is_file()),
                                              (f"Outcomes-{s}.txt", (raw / f"Outcomes-{s}.txt").is_file())) if not there]
    if not wanted:
        return
    raw.mkdir(parents=True, exist_ok=True)
    sums = _published_sums(base, raw, progress)
    for name in wanted:
        if name not in sums:
            raise PrepareError(f"{raw / 'SHA256SUMS.txt'}: no checksum for {name}; not downloading it unchecked")

        def check(path: Path, name=name) -> None:
            found = sha256(path)
            if found != sums[name]:
                raise PrepareError(f"{name}: sha256 {found} does not match PhysioNet's {sums[name]}")
            set_name = name.split("-")[1][0]
            if set_name in PUBLISHED:  # and set A is the content this package was built on
                kind = "records" if name.startswith("set-") else "outcomes"
                found = (records_digest(record_files(path.parent, set_name)[0]) if kind == "records"
                         else found)
                if found != PUBLISHED[set_name][kind]:
                    raise PrepareError(f"{name}: its {kind} (checksum {found}) are not the published set {set_name.upper()}")

        fetch([base + name], raw / name, check, progress)


# ---------------------------------------------------------------------- the whole recipe


def prepare_set(raw: Path, set_name: str, files: list[tuple[str, bytes]], source: str,
                progress: bool = True) -> tuple[dict[str, np.ndarray], dict]:
    """The arrays and the metadata entry of one set, from its ``record_files``."""
    counts = {v: {"kept": 0, "not_measured": 0, "implausible": 0}
              for v in (*VARIABLES, *(f"descriptor:{d}" for d in DESCRIPTORS[1:]))}
    records: dict[int, tuple[str, Record]] = {}
    for name, data in tqdm(files, desc=f"set {set_name}", unit="record", disable=not progress):
        record = parse_record(data.decode("utf-8", errors="replace"), name, counts)
        if record.record_id in records:
            raise PrepareError(f"{name}: RecordID {record.record_id} again (first in {records[record.record_id][0]})")
        records[record.record_id] = (name, record)
    if not records:
        raise PrepareError(f"{source}: no record files (<RecordID>.txt)")
    outcomes_file = raw / f"Outcomes-{set_name}.txt"
    outcomes = read_outcomes(outcomes_file)
    for record_id, (name, _) in records.items():
        if record_id not in outcomes:
            raise PrepareError(f"{outcomes_file}: no line for RecordID {record_id} ({name})")
    for record_id, (line, _) in outcomes.items():
        if record_id not in records:
            raise PrepareError(f"{outcomes_file}:{line}: RecordID {record_id} has no record in {source}")
    ids = sorted(records)
    series = np.empty((len(ids), HOURS, len(VARIABLES)), np.float32)
    mask = np.empty(series.shape, np.uint8)
    delta = np.empty(series.shape, np.float32)
    for row, record_id in enumerate(ids):
        series[row], mask[row], delta[row] = bin_hourly(records[record_id][1])
    static = np.stack([records[i][1].static for i in ids]).astype(np.float32)
    arrays = {"record_id": np.array(ids, np.int64), "static": static,
              "static_mask": np.isfinite(static).astype(np.uint8), "series": series,
              "series_mask": mask, "series_delta": delta,
              "outcomes": np.array([outcomes[i][1] for i in ids], np.int32)}
    digest = records_digest(files)
    outcomes_sha = sha256(outcomes_file)
    published = PUBLISHED.get(set_name)
    deaths = int(arrays["outcomes"][:, OUTCOMES.index("In-hospital_death")].sum())
    # imputed wholesale by the task loader, so said here (and by main): a variable or descriptor
    # no record measured, a record without any series measurement (set A has three)
    imputed = {"variables_measured_in_no_record": [v for v, c in counts.items() if c["kept"] == 0],
               "records_without_series": [i for i in ids if not len(records[i][1].minutes)]}
    return arrays, {"source": source, "records": len(ids), "in_hospital_deaths": deaths,
                    "records_digest": digest, "outcomes_sha256": outcomes_sha,
                    "published": None if published is None else
                    published == {"records": digest, "outcomes": outcomes_sha},
                    "measurements": counts, "imputed_throughout": imputed}


def available_sets(raw: Path) -> list[str]:
    return [s for s in SETS if (raw / f"set-{s}").is_dir() or (raw / f"set-{s}.tar.gz").is_file()]


def prepare(raw: str | os.PathLike, out: str | os.PathLike, sets: Sequence[str] | None = None,
            overwrite: bool = False, download_missing: bool = False, mirror: str | None = None,
            progress: bool = True) -> dict:
    """Build the prepared folder ``out`` from the challenge files in ``raw``; returns the metadata."""
    raw, out = Path(raw), Path(out)
    unknown = set(sets or ()) - set(SETS)
    if unknown:
        raise PrepareError(f"--sets: {sorted(unknown)} are not challenge sets (a, b, c)")
    if sets is not None and not len(sets):  # an empty list is not "every set"
        raise PrepareError("--sets: name at least one of a, b, c (or leave --sets out for every set in --raw)")
    prepare_output(out)  # now, not after the work: unwritable, a mount point, a loop; killed runs' leftovers gone
    # --raw is a folder, or nothing that --download is to create (checked before the output check
    # resolves it: a looping link fails there)
    if not raw.is_dir() and (raw.exists() or raw.is_symlink() or not download_missing):
        raise PrepareError(f"{raw}: not a folder" + ("" if download_missing else
                                                     " (pass --download to fetch the challenge files)"))
    # the set folders there (only they hold records; --download fetches archives)
    folders = [raw / f"set-{s}" for s in SETS if (raw / f"set-{s}").is_dir()]
    check_output(out, overwrite, [raw, *folders], OUTPUTS)
    if download_missing:
        download(raw, sets or SETS, mirror or os.environ.get(MIRROR_ENV), progress)
    sets = list(dict.fromkeys(sets)) if sets else available_sets(raw)
    if not sets:
        raise PrepareError(f"{raw}: no set-a/b/c folder or .tar.gz archive (pass --download to fetch them)")
    read = {s: record_files(raw, s) for s in sets}
    # before the records are parsed: the arrays' uncompressed size bounds the .npz files
    per_record = 9 * HOURS * len(VARIABLES) + 5 * len(STATIC) + 8 + 4 * len(OUTCOMES)
    check_free_space(out, sum(len(files) for files, _ in read.values()) * per_record + 2 ** 20,
                     "the prepared PhysioNet 2012 data")
    built = {s: prepare_set(raw, s, *read[s], progress) for s in sets}
    seen: dict[int, str] = {}
    for s, (arrays, _) in built.items():
        for record_id in arrays["record_id"]:
            if int(record_id) in seen:
                raise PrepareError(f"{raw}: RecordID {record_id} is in set {seen[int(record_id)]} and set {s}")
            seen[int(record_id)] = s
    meta = {
        "format_version": FORMAT_VERSION, "hours": HOURS, "sets": {s: m for s, (_, m) in built.items()},
        "static": list(STATIC), "static_ranges": {k: {"unit": u, "low": lo, "high": hi} for k, (u, lo, hi) in STATIC_RANGES.items()},
        "codes": {k: list(v) for k, v in CODES.items()}, "icu_types": list(ICU_TYPES),
        "series": list(VARIABLES), "series_ranges": {k: {"unit": u, "low": lo, "high": hi} for k, (u, lo, hi) in SERIES.items()},
        "summed_in_the_hour": list(SUMMED), "outcomes": list(OUTCOMES),
        "reference_scores": ["SAPS-I", "SOFA"], "label": "In-hospital_death",
        "binning": "hour h holds [h, h+1) h after ICU admission (48:00 joins hour 47); mean of the hour "
                   "(Urine: sum); delta: hours from the last measurement at or before hour h to its end",
    }
    with atomic_folder(out) as tmp:  # a full disk meanwhile: one line, nothing left
        for s, (arrays, _) in built.items():
            np.savez_compressed(tmp / f"set-{s}.npz", **arrays)
        (tmp / "metadata.json").write_text(json.dumps(meta, indent=2))
    return meta


@script_main
def main(argv: Sequence[str] | None = None) -> int:
    parser = script_parser(__doc__, "folder to write set-X.npz and metadata.json to")
    parser.add_argument("--raw", required=True, type=Path, help="folder of set-X.tar.gz (or set-X/) and Outcomes-X.txt")
    parser.add_argument("--sets", nargs="*", choices=SETS, help="which sets (default: every one in --raw; "
                        "with --download: a, b and c)")
    parser.add_argument("--download", action="store_true", help="fetch the missing files from PhysioNet, checked")
    parser.add_argument("--mirror", help=f"base URL to download from instead of PhysioNet (or ${MIRROR_ENV})")
    args = parser.parse_args(argv)
    meta = prepare(args.raw, args.out, sets=args.sets, overwrite=args.overwrite, download_missing=args.download,
                   mirror=args.mirror, progress=not args.no_progress)
    for s, m in meta["sets"].items():
        imputed = m["imputed_throughout"]
        never, empty = imputed["variables_measured_in_no_record"], imputed["records_without_series"]
        if never:
            print(f"warning: set {s}: no record has a measurement of {', '.join(never)} (missing throughout)",
                  file=sys.stderr)
        if empty:
            print(f"warning: set {s}: {len(empty)} record(s) have no time-series measurement "
                  f"({', '.join(map(str, empty[:5]))}{' ...' if len(empty) > 5 else ''}), listed in metadata.json",
                  file=sys.stderr)
        implausible = sum(c["implausible"] for c in m["measurements"].values())
        print(f"wrote {Path(args.out) / f'set-{s}.npz'}: {m['records']} ICU stays, {m['in_hospital_deaths']} "
              f"in-hospital deaths; {implausible} implausible values dropped"
              + (" (the published set)" if m["published"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
