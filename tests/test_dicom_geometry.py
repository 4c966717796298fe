"""DICOM series geometry on real pixel data: every voxel where dcm2niix puts it.

The three real CT slices of ``../shared/data/dcmqi_ct_seg/ct-3slice`` (512², GE) are re-written with other
geometries — oblique, sagittal, coronal, flipped (LPS-looking) in-plane axes, files out of order, gantry tilt, and one
enhanced multi-frame file — and read with :func:`pipeline.data.dicom_series.read_series`. Each volume is checked against
the geometry it was written with (always) and against dcm2niix's NIfTI of the same files, both reoriented to RAS
(when dcm2niix is installed; ``.ci/run`` installs it). Skipped without ``../shared/data``.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipeline.data.dicom_series import DicomError, find_dicom_series, read_series

SRC = Path(__file__).resolve().parents[2] / "shared" / "data" / "dcmqi_ct_seg" / "ct-3slice"
pytestmark = pytest.mark.skipif(not SRC.is_dir(), reason="../shared/data/dcmqi_ct_seg is absent")
DCM2NIIX = shutil.which("dcm2niix")
STEP = 1.0  # the source slices are 1 mm apart


def _rotation(ax: float, az: float) -> np.ndarray:
    a, z = np.radians(ax), np.radians(az)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(z), -np.sin(z), 0], [np.sin(z), np.cos(z), 0], [0, 0, 1]])
    return rz @ rx


GEOMETRIES = {  # name: (row cosine, column cosine) in LPS
    "axial": ((1, 0, 0), (0, 1, 0)),
    "oblique": (tuple(_rotation(15, 20)[:, 0]), tuple(_rotation(15, 20)[:, 1])),
    "sagittal": ((0, 1, 0), (0, 0, -1)),
    "coronal": ((1, 0, 0), (0, 0, -1)),
    "flipped_inplane": ((-1, 0, 0), (0, -1, 0)),
}


def _sources():
    import pydicom

    return [pydicom.dcmread(p) for p in sorted(SRC.glob("*.dcm"))]


def _write_series(
    out: Path, row, col, order=(0, 1, 2), shear: float = 0.0, origin=(-100.0, -120.0, 40.0)
) -> tuple[Path, np.ndarray, list[np.ndarray]]:
    """Write the 3 source slices with a new geometry; slice k (in order along the normal) gets source k's pixels.

    Returns the folder, the expected RAS affine and the expected slices (modality units), k = 0..2.
    """
    from pydicom.uid import generate_uid

    out.mkdir(parents=True)
    row, col = np.asarray(row, float), np.asarray(col, float)
    normal = np.cross(row, col)
    uid, sources = generate_uid(), _sources()
    expected = []
    for k, ds in enumerate(sources):
        pos = np.asarray(origin) + k * STEP * normal + k * shear * col
        ds.SeriesInstanceUID, ds.SOPInstanceUID = uid, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*row, *col)]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in pos]
        ds.InstanceNumber = order.index(k) + 1  # instance numbers and file names follow `order`, not the geometry
        ds.save_as(out / f"IM{order.index(k):04d}.dcm")
        expected.append(ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept))
    dr, dc = (float(v) for v in sources[0].PixelSpacing)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2] = row * dc, col * dr, STEP * normal + shear * col
    lps[:3, 3] = origin
    return out, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps, expected


def _read(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    series, unreadable, _ = find_dicom_series(sorted(str(p) for p in folder.iterdir()))
    assert not unreadable and len(series) == 1
    return read_series(series[0])


def _dcm2niix(folder: Path, tmp: Path) -> nib.Nifti1Image:
    out = tmp / f"nii_{folder.name}"
    out.mkdir()
    proc = subprocess.run(
        [DCM2NIIX, "-z", "n", "-b", "n", "-f", "vol", "-o", str(out), str(folder)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    files = sorted(out.glob("*.nii"))
    assert len(files) == 1, (files, proc.stdout)
    return nib.load(files[0])


def _max_deviation_mm(a: nib.Nifti1Image, b: nib.Nifti1Image) -> float:
    """Largest distance between the same voxel's world positions (corners of the grid), both reoriented to RAS."""
    a, b = nib.as_closest_canonical(a), nib.as_closest_canonical(b)
    assert a.shape[:3] == b.shape[:3]
    corners = np.array(
        [[i, j, k, 1] for i in (0, a.shape[0] - 1) for j in (0, a.shape[1] - 1) for k in (0, a.shape[2] - 1)]
    )
    return float(np.abs((corners @ a.affine.T) - (corners @ b.affine.T))[:, :3].max())


def _check(folder: Path, affine: np.ndarray, slices: list[np.ndarray], tmp: Path) -> None:
    """The volume read from ``folder`` has the written geometry and voxels, and equals dcm2niix's (when installed)."""
    volume, got = _read(folder)
    np.testing.assert_allclose(got, affine, atol=1e-4)
    assert volume.shape == (512, 512, 3)
    for k in range(3):  # voxel [i, j, k] = column i, row j of the k-th slice along the normal
        np.testing.assert_array_equal(volume[:, :, k], slices[k].T)
    if DCM2NIIX is None:
        pytest.skip("dcm2niix is not installed (apt-get install dcm2niix); geometry checked against the header only")
    ref = _dcm2niix(folder, tmp)
    ours = nib.Nifti1Image(volume, got)
    assert _max_deviation_mm(ours, ref) < 1e-3
    np.testing.assert_allclose(
        np.asarray(nib.as_closest_canonical(ours).dataobj),
        nib.as_closest_canonical(ref).get_fdata(dtype=np.float32),
        atol=1e-3,
    )


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
@pytest.mark.parametrize("order", [(0, 1, 2), (2, 0, 1)], ids=["in_order", "out_of_order"])
def test_geometry_matches_the_written_one_and_dcm2niix(tmp_path, name, order):
    row, col = GEOMETRIES[name]
    folder, affine, slices = _write_series(tmp_path / name, row, col, order)
    _check(folder, affine, slices, tmp_path)


def test_gantry_tilt_is_refused_with_the_fix(tmp_path):
    folder, *_ = _write_series(tmp_path / "tilt", (1, 0, 0), (0, 1, 0), shear=0.3)  # 16.7 degrees
    with pytest.raises(DicomError, match=r"gantry tilt: the slices are stacked 16\.7 degrees off .*dcm2niix"):
        _read(folder)


def _enhanced_ct(out: Path, row, col, origin=(-100.0, -120.0, 40.0), reverse_frames: bool = False):
    """One Enhanced CT Image Storage file holding the 3 source slices as frames (per-frame plane positions)."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    sources = _sources()
    row, col = np.asarray(row, float), np.asarray(col, float)
    normal = np.cross(row, col)
    frames = [2, 1, 0] if reverse_frames else [0, 1, 2]  # frame f holds the slice at position frames[f]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID
    for key in ("PatientName", "PatientID", "StudyInstanceUID", "StudyDate", "Manufacturer"):
        setattr(ds, key, sources[0].get(key, ""))
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = "CT", generate_uid(), 7, 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.Rows, ds.Columns, ds.NumberOfFrames = sources[0].Rows, sources[0].Columns, 3
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing, measures.SliceThickness = sources[0].PixelSpacing, STEP
    plane = Dataset()
    plane.ImageOrientationPatient = [f"{v:.8f}" for v in (*row, *col)]
    transform = Dataset()
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = 1, -1024, "HU"
    shared.PixelMeasuresSequence, shared.PlaneOrientationSequence = Sequence([measures]), Sequence([plane])
    shared.PixelValueTransformationSequence = Sequence([transform])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame, pixels, expected = [], [], [None] * 3
    for k in frames:
        group, position, content = Dataset(), Dataset(), Dataset()
        position.ImagePositionPatient = [f"{v:.6f}" for v in np.asarray(origin) + k * STEP * normal]
        content.InStackPositionNumber = k + 1
        group.PlanePositionSequence, group.FrameContentSequence = Sequence([position]), Sequence([content])
        per_frame.append(group)
        raw = sources[k].pixel_array.astype(np.float32) * float(sources[k].RescaleSlope)
        raw += float(sources[k].RescaleIntercept) + 1024  # stored so that slope 1, intercept -1024 gives HU back
        pixels.append(raw.astype(np.int16))
        expected[k] = raw - 1024
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.PixelData = np.stack(pixels).tobytes()
    out.mkdir(parents=True)
    pydicom.dcmwrite(out / "enhanced.dcm", ds, enforce_file_format=True)
    dr, dc = (float(v) for v in sources[0].PixelSpacing)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = row * dc, col * dr, STEP * normal, origin
    return out, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps, expected


@pytest.mark.parametrize("reverse_frames", [False, True], ids=["frames_in_order", "frames_reversed"])
def test_enhanced_multiframe_ct_is_read_frame_by_frame(tmp_path, reverse_frames):
    row, col = GEOMETRIES["oblique"]
    folder, affine, slices = _enhanced_ct(tmp_path / "mf", row, col, reverse_frames=reverse_frames)
    _check(folder, affine, slices, tmp_path)
