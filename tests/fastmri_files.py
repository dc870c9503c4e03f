"""Miniature fastMRI knee files in the published single-coil layout, for the tests.

Written independently of ``data_scripts/prepare_fastmri.py`` (its own FFT convention, its own
reading of knee.csv), named like real volumes of fastMRI+'s ``knee_file_list.csv``. Each file
holds what a published single-coil knee file holds: ``kspace`` complex64 (slices, 640, W),
``reconstruction_esc`` and ``reconstruction_rss`` float32 (slices, 320, 320), an
``ismrmrd_header`` XML string, and the attributes ``acquisition``, ``max``, ``norm``,
``patient_id``. Only the number of slices is small: as many as the volume's last annotated
slice needs, so the real annotations still apply.
"""

from __future__ import annotations

import csv
from pathlib import Path

import h5py
import numpy as np

HEIGHT, WIDTH = 640, 368  # the usual single-coil knee k-space
# Reviewed volumes with findings of every kind at low slice numbers, two reviewed volumes with
# no finding (negatives), and one volume fastMRI+ never reviewed (excluded).
ANNOTATED = ("file1001403", "file1000969", "file1000382", "file1000486", "file1000185")
REVIEWED_NO_FINDING = {"file1000033": 6, "file1000045": 6}
NOT_REVIEWED = {"file1000004": 4}
# fastMRI+'s 21 slice-level label strings, by hand, with their stray spaces: the label each sets
EXPECTED_LABEL = {
    "Meniscus Tear": "meniscus_tear", "Displaced Meniscal Tissue": "abnormal",
    "Cartilage - Partial Thickness loss/defect": "cartilage", "Cartilage - Full Thickness loss/defect": "cartilage",
    "Ligament - ACL Low Grade sprain": "acl", "Ligament - ACL High Grade Sprain": "acl",
    "Joint Effusion ": "abnormal", "Bone-Fracture/Contusion/dislocation": "abnormal",
    "Bone- Subchondral edema": "abnormal", "Periarticular cysts": "abnormal", "Bone - Lesion": "abnormal",
    "Ligament - MCL Low-Mod Grade Sprain": "abnormal", "Ligament - MCL High Grade sprain": "abnormal",
    "Ligament - PCL Low-Mod grade sprain": "abnormal", "Ligament - PCL High Grade": "abnormal",
    "LCL Complex - Low-Mod Grade Sprain": "abnormal", "LCL Complex- High Grade Sprain": "abnormal",
    "Soft Tissue Lesion": "abnormal", "Muscle Strain": "abnormal", "Joint Bodies": "abnormal",
    "Patellar Retinaculum - High grade sprain": "abnormal",
}
LABELS = ("abnormal", "meniscus_tear", "acl", "cartilage")


def annotation_rows(knee_csv: Path) -> list[dict]:
    with open(knee_csv, newline="") as f:
        return list(csv.DictReader(f))


def expected_labels(knee_csv: Path, volume: str, n_slices: int) -> np.ndarray:
    """(n_slices, 4) labels of a reviewed volume, from its rows of knee.csv and EXPECTED_LABEL."""
    out = np.zeros((n_slices, 4), dtype=np.uint8)
    for row in annotation_rows(knee_csv):
        if row["file"] == volume and row["study_level"] == "No" and int(row["slice"]) < n_slices:
            out[int(row["slice"]), LABELS.index(EXPECTED_LABEL[row["label"]])] = 1
    return out


def centred_fft(image: np.ndarray) -> np.ndarray:
    """k-space of an image, zero frequency at index n // 2 (the fastMRI files' convention)."""
    shifted = np.fft.ifftshift(image, axes=(-2, -1))
    return np.fft.fftshift(np.fft.fft2(shifted, norm="ortho"), axes=(-2, -1))


def phantom(rng: np.random.Generator, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """A complex knee-like picture: a few ellipses of tissue with a smooth phase, centred."""
    y, x = np.mgrid[-1:1:complex(height), -1:1:complex(width)]
    image = np.zeros((height, width))
    for _ in range(4):
        cy, cx = rng.uniform(-0.2, 0.2, 2)
        ry, rx = rng.uniform(0.1, 0.35), rng.uniform(0.2, 0.6)
        image += rng.uniform(0.3, 1.0) * (((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 < 1)
    image += 0.02 * rng.standard_normal(image.shape)
    phase = rng.uniform(-1, 1) * x + rng.uniform(-1, 1) * y ** 2 + rng.uniform(-np.pi, np.pi)
    return image * np.exp(1j * phase)


ISMRMRD_HEADER = """<?xml version="1.0" encoding="utf-8"?>
<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <studyInformation><studyTime>00:00:00</studyTime></studyInformation>
  <acquisitionSystemInformation><systemVendor>SIEMENS</systemVendor><systemModel>Skyra</systemModel>
    <systemFieldStrength_T>2.89362</systemFieldStrength_T><receiverChannels>15</receiverChannels>
  </acquisitionSystemInformation>
  <experimentalConditions><H1resonanceFrequency_Hz>123252062</H1resonanceFrequency_Hz></experimentalConditions>
  <encoding>
    <encodedSpace><matrixSize><x>{height}</x><y>{width}</y><z>1</z></matrixSize>
      <fieldOfView_mm><x>280</x><y>{fov_y}</y><z>4.5</z></fieldOfView_mm></encodedSpace>
    <reconSpace><matrixSize><x>320</x><y>320</y><z>1</z></matrixSize>
      <fieldOfView_mm><x>140</x><y>140</y><z>3</z></fieldOfView_mm></reconSpace>
    <trajectory>cartesian</trajectory>
    <encodingLimits>
      <kspace_encoding_step_1><minimum>0</minimum><maximum>{max_step}</maximum><center>{center}</center>
      </kspace_encoding_step_1>
      <slice><minimum>0</minimum><maximum>{max_slice}</maximum><center>0</center></slice>
    </encodingLimits>
  </encoding>
  <sequenceParameters><TR>2750</TR><TE>27</TE><TI>100</TI><flipAngle_deg>140</flipAngle_deg>
    <sequence_type>TurboSpinEcho</sequence_type></sequenceParameters>
</ismrmrdHeader>
"""


def write_volume(path: Path, images: np.ndarray, kspace: np.ndarray | None = None) -> Path:
    """One file in the published single-coil layout from complex images (slices, H, W)."""
    if kspace is None:
        kspace = centred_fft(images)
    n, height, width = kspace.shape[0], kspace.shape[-2], kspace.shape[-1]
    top, left = (images.shape[-2] - 320) // 2, max(0, (images.shape[-1] - 320) // 2)
    recon = np.abs(images[..., top:top + 320, left:left + 320]).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=kspace.astype(np.complex64))
        f.create_dataset("reconstruction_esc", data=recon)
        f.create_dataset("reconstruction_rss", data=recon)
        header = ISMRMRD_HEADER.format(height=height, width=width, fov_y=round(140 * width / 320, 1),
                                       max_step=width - 1, center=width // 2, max_slice=n - 1)
        f.create_dataset("ismrmrd_header", data=header.encode())
        f.attrs["acquisition"] = "CORPD_FBK"
        f.attrs["max"] = float(recon.max())
        f.attrs["norm"] = float(np.linalg.norm(recon))
        f.attrs["patient_id"] = "0" * 64
    return path


def slices_needed(knee_csv: Path) -> dict[str, int]:
    """Per annotated volume of ANNOTATED, its last annotated slice + 2."""
    last: dict[str, int] = {}
    for row in annotation_rows(knee_csv):
        if row["file"] in ANNOTATED and row["study_level"] == "No":
            last[row["file"]] = max(last.get(row["file"], 0), int(row["slice"]))
    return {v: last[v] + 2 for v in ANNOTATED}


def write_miniature_set(folder: Path, knee_csv: Path, seed: int = 0) -> dict[str, int]:
    """The miniature raw folder (singlecoil_train/ and singlecoil_val/ as published); name -> slices."""
    rng = np.random.default_rng(seed)
    volumes = {**slices_needed(knee_csv), **REVIEWED_NO_FINDING, **NOT_REVIEWED}
    for i, (name, n) in enumerate(sorted(volumes.items())):
        # one knee per volume, its slices differing in brightness and noise (cheap to make)
        knee = phantom(rng).astype(np.complex64)
        images = knee * rng.uniform(0.5, 1.5, (n, 1, 1)).astype(np.float32)
        images += 0.02 * rng.standard_normal(images.shape, dtype=np.float32)
        write_volume(folder / ("singlecoil_val" if i % 3 == 2 else "singlecoil_train") / f"{name}.h5", images)
    return volumes


_CACHE: dict[Path, tuple[Path, dict[str, int]]] = {}


def miniature_raw(tmp_path_factory, knee_csv: Path) -> tuple[Path, dict[str, int]]:
    """The miniature raw folder, written once per test session and shared by the test modules."""
    base = tmp_path_factory.getbasetemp()
    if base not in _CACHE:
        folder = base / "fastmri_raw"
        _CACHE[base] = (folder, write_miniature_set(folder, knee_csv))
    return _CACHE[base]
