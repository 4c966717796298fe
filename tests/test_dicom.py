"""DICOM series: grouping by SeriesInstanceUID, slice order along the normal, affine, rejection of non-volumes,
and segmentation of series end to end (mask in the series' grid, optional DICOM SEG)."""

from __future__ import annotations

import csv
import hashlib
import json
import random
import shutil
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from pipeline.data.dicom_series import DicomError, find_dicom_series, read_series, series_geometry
from pipeline.inference.engine import BatchInference

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)  # rows along +y (A->P in LPS), columns along -z; normal (-1, 0, 0)
SLOPE, INTERCEPT = 2.0, -1024.0


def raw_value(t: int, row: int, col: int) -> int:
    """Stored pixel value of file ``t`` (its index in writing order) at (row, col): encodes all three."""
    return t * 1000 + row * 16 + col


def write_series(
    folder: Path,
    positions: Sequence[Sequence[float]],
    orientation: Sequence[float] = AXIAL,
    spacing: tuple[float, float] = (0.7, 0.8),
    rows: int = 16,
    cols: int = 16,
    uid: str | None = None,
    names: Sequence[str] | None = None,
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    seed: int = 0,
) -> str:
    """One CT series, one file per position, written in shuffled order under shuffled names; returns its UID."""
    uid = uid or generate_uid()
    study, frame = generate_uid(), generate_uid()
    order = list(range(len(positions)))
    random.Random(seed).shuffle(order)
    folder.mkdir(parents=True, exist_ok=True)
    for n, t in enumerate(order):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, uid, frame
        ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = "anon", "Anon^Test", "19700101", "O"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240101", "120000", "1", "A1"
        ds.ReferringPhysicianName, ds.Manufacturer = "", "test"
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 1, t + 1
        ds.ImageType = list(image_type)
        ds.ImagePositionPatient = [float(v) for v in positions[t]]
        ds.ImageOrientationPatient = list(orientation)
        ds.PixelSpacing = list(spacing)
        ds.SliceThickness = 2.5
        ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, cols, 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = SLOPE, INTERCEPT, "HU"
        r, c = np.mgrid[0:rows, 0:cols]
        ds.PixelData = raw_value(t, r, c).astype(np.int16).tobytes()
        # three naming habits: SOP Instance UID (a "numeric extension"), IM<number> (none), and .dcm
        styles = [
            ds.SOPInstanceUID,
            f"IM{random.Random(ds.SOPInstanceUID).randrange(10**8):08d}",
            f"{n}_{uid[-6:]}.dcm",
        ]
        name = names[n] if names else styles[n % 3]
        ds.save_as(folder / name, enforce_file_format=True)
    return uid


def axial_positions(n: int = 6, step: float = 2.5, origin=(-10.0, -20.0, 5.0)) -> list[tuple[float, float, float]]:
    return [(origin[0], origin[1], origin[2] + step * k) for k in range(n)]


def bundle_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _check_geometry(volume: np.ndarray, affine: np.ndarray, positions, orientation, spacing) -> None:
    """Every voxel maps to the DICOM position of its pixel: P = IPP + col*dc*row_cos + row*dr*col_cos (LPS)."""
    row_cos, col_cos = np.array(orientation[:3]), np.array(orientation[3:])
    dr, dc = spacing
    for k in range(volume.shape[2]):
        t = int(round((volume[0, 0, k] - INTERCEPT) / SLOPE)) // 1000  # which file this slice came from
        for i, j in [(0, 0), (5, 3), (volume.shape[0] - 1, volume.shape[1] - 1)]:
            assert volume[i, j, k] == raw_value(t, j, i) * SLOPE + INTERCEPT  # column i, row j
            lps = np.array(positions[t]) + i * dc * row_cos + j * dr * col_cos
            np.testing.assert_allclose((affine @ [i, j, k, 1])[:3], lps * [-1, -1, 1], atol=1e-4)


def test_two_shuffled_series_in_one_folder_become_one_volume_each(tmp_path):
    folder = tmp_path / "study"
    axial = axial_positions()
    sag = [(30.0 - 3.0 * k, -20.0, 30.0) for k in range(5)]  # x decreases along the normal (-1, 0, 0)
    uid_a = write_series(folder, axial, seed=1)
    uid_b = write_series(folder, sag, SAGITTAL, spacing=(0.5, 0.6), rows=12, cols=10, seed=2)
    (folder / "README").write_text("not DICOM, ignored")
    series, unreadable, ignored = find_dicom_series(bundle_files(folder))
    assert (unreadable, ignored) == ([], [])
    by_uid = {s.uid: s for s in series}
    assert set(by_uid) == {uid_a, uid_b}

    vol, aff = read_series(by_uid[uid_a])
    assert vol.shape == (16, 16, 6) and vol.dtype == np.float32
    expected = np.array([[-0.8, 0, 0, 10.0], [0, -0.7, 0, 20.0], [0, 0, 2.5, 5.0], [0, 0, 0, 1]])
    np.testing.assert_allclose(aff, expected, atol=1e-6)  # hand-computed: LPS -> RAS flips x and y
    files_in_order = [int(round((vol[0, 0, k] - INTERCEPT) / SLOPE)) // 1000 for k in range(6)]
    assert files_in_order == list(range(6))  # inferior -> superior, whatever the file order on disk
    _check_geometry(vol, aff, axial, AXIAL, (0.7, 0.8))

    vol, aff = read_series(by_uid[uid_b])
    assert vol.shape == (10, 12, 5)  # (Columns, Rows, slices)
    _check_geometry(vol, aff, sag, SAGITTAL, (0.5, 0.6))
    assert np.linalg.det(aff[:3, :3]) > 0  # slices ordered along +normal: a right-handed voxel grid


def test_missing_slice_is_named_with_the_gap(tmp_path):
    positions = [p for k, p in enumerate(axial_positions(7)) if k != 3]
    write_series(tmp_path / "gap", positions)
    (series,), _, _ = find_dicom_series(bundle_files(tmp_path / "gap"))
    with pytest.raises(DicomError, match=r"missing slice.*gap of 5\.00 mm.*expected 2\.50 mm.*about 1 slice"):
        read_series(series)


@pytest.mark.parametrize(
    ("kind", "match"),
    [
        ("single", "single 2D image"),
        ("localizer", "localizer/projection"),
        ("mixed_size", "mixed image sizes"),
        ("mixed_orientation", "mixed orientations"),
        ("duplicate", "share slice position"),
        ("uneven", "non-uniform slice spacing"),
    ],
)
def test_non_volumes_are_rejected(tmp_path, kind, match):
    uid = generate_uid()
    if kind == "single":
        write_series(tmp_path, axial_positions(1), uid=uid)
    elif kind == "localizer":
        write_series(tmp_path, axial_positions(3), image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    elif kind == "mixed_size":
        write_series(tmp_path, axial_positions(3), uid=uid, names=["a1", "a2", "a3"])
        write_series(tmp_path, axial_positions(6)[3:], uid=uid, rows=8, names=["b1", "b2", "b3"])
    elif kind == "mixed_orientation":
        write_series(tmp_path, axial_positions(3), uid=uid, names=["a1", "a2", "a3"])
        write_series(tmp_path, [(40.0, 0.0, 0.0)], SAGITTAL, uid=uid, names=["b1"])
    elif kind == "duplicate":
        write_series(tmp_path, axial_positions(3) + axial_positions(3), uid=uid)
    elif kind == "uneven":
        write_series(tmp_path, [(0, 0, z) for z in (0.0, 2.0, 5.0, 6.0, 10.0)], uid=uid)
    (series,), _, _ = find_dicom_series(bundle_files(tmp_path))
    with pytest.raises(DicomError, match=match):
        series_geometry(series)


def _pydicom_test_dir(name: str) -> Path:
    path = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests" / name
    if not path.is_dir():
        pytest.skip(f"pydicom test files not installed ({path})")
    return path


def test_real_ct_series_from_pydicom():
    """CT5N: 5 axial 16x16 slices, 0.488 mm pixels, 2.5 mm apart (files named by number, no extension)."""
    folder = _pydicom_test_dir("98892001/CT5N")
    (series,), unreadable, _ = find_dicom_series(bundle_files(folder))
    assert unreadable == []
    vol, aff = read_series(series)
    assert vol.shape == (16, 16, 5)
    np.testing.assert_allclose(np.abs(np.diag(aff)[:3]), [0.488281, 0.488281, 2.5], atol=1e-5)
    first = pydicom.dcmread(series_geometry(series)[0][0].path)
    assert float(first.ImagePositionPatient[2]) == pytest.approx(-1.2375)  # most inferior slice first
    np.testing.assert_allclose(aff[:3, 3], [72.199997, 143.0, -1.2375], atol=1e-4)


@pytest.mark.parametrize(("name", "match"), [("98892003/MR700", "localizer/projection"), ("77654033/CT2", "gap")])
def test_real_non_volumes_from_pydicom(name, match):
    """MR700: 7 projection images (MONAI's PydicomReader stacks them silently); CT2: 4 slices with a 202 mm gap."""
    (series,), _, _ = find_dicom_series(bundle_files(_pydicom_test_dir(name)))
    with pytest.raises(DicomError, match=match):
        series_geometry(series)


def _digest(folder: Path) -> dict[str, tuple[str, int]]:
    return {str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in bundle_files(folder)}


@pytest.mark.parametrize("dicom_seg", [False, True])
def test_series_are_segmented_in_their_own_grid(tmp_path, dicom_seg):
    if dicom_seg:
        hd = pytest.importorskip("highdicom")
    root = tmp_path / "archive"
    uid_a = write_series(root / "pat1" / "ct", axial_positions(), seed=3)
    sag = [(30.0 - 3.0 * k, -20.0, 30.0) for k in range(5)]
    uid_b = write_series(root / "pat1" / "ct", sag, SAGITTAL, spacing=(0.5, 0.6), rows=12, cols=10, seed=4)
    uid_gap = write_series(root / "pat2", [p for k, p in enumerate(axial_positions(7)) if k != 2], seed=5)
    (root / "pat2" / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00garbage")
    (root / "pat2" / "random.dcm").write_bytes(np.random.default_rng(0).bytes(600))
    before = _digest(root)

    torch.manual_seed(0)
    engine = BatchInference(
        torch.nn.Conv3d(1, 3, 1), class_names=["background", "organ", "lesion"], roi_size=(32, 32, 32),
        sw_batch_size=1, progress=False, dicom_seg=dicom_seg,
    )  # fmt: skip
    out = tmp_path / "masks"
    report = engine.run(root, out)
    assert report.exit_code == 3
    assert _digest(root) == before  # inputs untouched
    for uid, shape in [(uid_a, (16, 16, 6)), (uid_b, (10, 12, 5))]:
        mask = nib.load(out / "pat1" / "ct" / f"{uid}_seg.nii.gz")
        (series,) = [s for s in find_dicom_series(bundle_files(root / "pat1"))[0] if s.uid == uid]
        vol, aff = read_series(series)
        assert mask.shape == vol.shape == shape
        np.testing.assert_allclose(mask.affine, aff, atol=1e-5)
        assert mask.get_data_dtype() == np.uint8
    rows = list(csv.DictReader((out / "failures.csv").open()))
    reasons = {Path(r["input"].split("#")[0]).name + r["stage"]: r["reason"] for r in rows}
    assert len(rows) == 3
    assert "missing slice" in reasons["pat2read"] and uid_gap in reasons["pat2read"]
    assert "not a readable DICOM file" in reasons["broken.dcmdiscover"]
    assert "no 'DICM' preamble" in reasons["random.dcmdiscover"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {"processed": 2, "skipped": 0, "failed": 3, "ignored": 0}

    if dicom_seg:
        seg = hd.seg.segread(out / "pat1" / "ct" / f"{uid_a}_seg.dcm")
        assert seg.SeriesInstanceUID != uid_a
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == uid_a
        assert [d.SegmentLabel for d in seg.SegmentSequence] == ["organ", "lesion"]
        labels = nib.load(out / "pat1" / "ct" / f"{uid_a}_seg.nii.gz").get_fdata()
        organ = seg.get_volume(segment_numbers=[1], combine_segments=False)  # frames in slice order
        assert int(np.asarray(organ.array).sum()) == int((labels == 1).sum())


def test_real_ct_series_end_to_end(tmp_path):
    src = _pydicom_test_dir("98892001/CT5N")
    root = tmp_path / "in" / "ct5n"
    shutil.copytree(src, root)
    engine = BatchInference(torch.nn.Conv3d(1, 2, 1), roi_size=(32, 32, 32), sw_batch_size=1, progress=False)
    report = engine.run(tmp_path / "in", tmp_path / "out")
    assert report.exit_code == 0
    (mask_path,) = (tmp_path / "out" / "ct5n").glob("*_seg.nii.gz")
    assert nib.load(mask_path).shape == (16, 16, 5)


def test_a_failed_dicom_seg_costs_that_output_only(tmp_path, monkeypatch):
    pytest.importorskip("highdicom")
    import pipeline.inference.engine as engine_module

    root = tmp_path / "archive"
    uid = write_series(root / "ct", axial_positions(), seed=3)

    def broken_seg(*args, **kwargs):
        raise ValueError("'' is not a valid SpecificCharacterSetValues")

    monkeypatch.setattr(engine_module, "write_dicom_seg", broken_seg)
    engine = BatchInference(
        torch.nn.Conv3d(1, 2, 1), class_names=["background", "organ"], roi_size=(32, 32, 32), sw_batch_size=1,
        progress=False, dicom_seg=True,
    )  # fmt: skip
    out = tmp_path / "masks"
    report = engine.run(root, out)
    assert (out / "ct" / f"{uid}_seg.nii.gz").is_file()  # the mask is written
    assert not (out / "ct" / f"{uid}_seg.dcm").exists() and not list(out.rglob("*.partial-*"))
    (row,) = list(csv.DictReader((out / "failures.csv").open()))
    assert row["stage"] == "write" and row["reason"].startswith(f"DICOM SEG {uid}_seg.dcm not written (")
    assert "the NIfTI mask was" in row["reason"] and report.exit_code == 3
    assert [p["outputs"] for p in report.processed] == [[str(out / "ct" / f"{uid}_seg.nii.gz")]]


def test_a_study_folder_segments_only_the_series_the_model_expects(tmp_path):
    study = tmp_path / "study"
    ct = write_series(study / "s1", axial_positions(), seed=1)
    scout = write_series(study / "s2", axial_positions(3), image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"), seed=2)
    mpr = write_series(study / "s3", axial_positions(), image_type=("DERIVED", "SECONDARY", "MPR"), seed=3)
    mr = write_series(study / "s4", axial_positions(), seed=4)
    for f in (study / "s4").iterdir():  # the same geometry, another modality
        ds = pydicom.dcmread(f)
        ds.Modality = "MR"
        ds.save_as(f)
    engine = BatchInference(
        torch.nn.Conv3d(1, 2, 1), roi_size=(32, 32, 32), sw_batch_size=1, progress=False,
        series_selection={"modalities": ["CT"]},
    )  # fmt: skip
    report = engine.run(study, tmp_path / "out")
    assert report.exit_code == 0 and [p["input"].split("#")[1] for p in report.processed] == [ct]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    reasons = {i["input"].split("#")[1]: i["reason"] for i in summary["ignored"]}
    assert "LOCALIZER" in reasons[scout] and "DERIVED" in reasons[mpr]
    assert reasons[mr].endswith("Modality MR; the model expects CT")
    with pytest.raises(ValueError, match=r"'series_selection': unknown key\(s\) \['modality'\]"):
        BatchInference(torch.nn.Conv3d(1, 2, 1), roi_size=(32, 32, 32), series_selection={"modality": "CT"})


def test_the_3d_bundle_expects_its_metadata_modality():
    from pipeline.bundle.config import BUNDLE_3D, get_parsed, open_bundle

    meta = json.loads((BUNDLE_3D / "configs" / "metadata.json").read_text())
    modality = meta["network_data_format"]["inputs"]["image"]["modality"]
    assert get_parsed(open_bundle(BUNDLE_3D, "inference.json"), "series_selection") == {"modalities": [modality]}


def test_fractional_dicom_seg_holds_the_class_probabilities(tmp_path):
    hd = pytest.importorskip("highdicom")
    root = tmp_path / "archive"
    uid = write_series(root / "ct", axial_positions(), seed=3)
    torch.manual_seed(0)
    engine = BatchInference(
        torch.nn.Conv3d(1, 3, 1), class_names=["background", "organ", "lesion"], roi_size=(32, 32, 32),
        sw_batch_size=1, progress=False, dicom_seg="fractional", probabilities=True,
    )  # fmt: skip
    out = tmp_path / "masks"
    assert engine.run(root, out).exit_code == 0
    seg = hd.seg.segread(out / "ct" / f"{uid}_seg.dcm")
    assert seg.SegmentationType == "FRACTIONAL" and [s.SegmentLabel for s in seg.SegmentSequence] == ["organ", "lesion"]
    probs = nib.load(out / "ct" / f"{uid}_prob.nii.gz").get_fdata()  # (X, Y, Z, C)
    organ = np.asarray(seg.get_volume(segment_numbers=[1], combine_segments=False).array)[..., 0]  # (Z, Y, X)
    np.testing.assert_allclose(np.sort(organ.ravel()), np.sort(probs[..., 1].ravel()), atol=1 / 255 + 1e-6)
    with pytest.raises(ValueError, match=r"'dicom_seg' must be False, True, 'binary' or 'fractional', got 'prob'"):
        BatchInference(torch.nn.Conv3d(1, 3, 1), roi_size=(32, 32, 32), dicom_seg="prob")


def test_a_non_image_object_without_preamble_is_ignored_not_failed(tmp_path):
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    write_series(tmp_path / "ct", axial_positions(), seed=1)
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.481.3", generate_uid()  # RT Structure Set
    ds.Modality, ds.SeriesInstanceUID, ds.StructureSetLabel = "RTSTRUCT", generate_uid(), "contours"
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, True
    write_dataset(buf, ds)  # a raw stream: no 128-byte preamble, no 'DICM', no file meta (as some exports write it)
    (tmp_path / "ct" / "rtss.dcm").write_bytes(buf.getvalue())
    (tmp_path / "ct" / "noise.dcm").write_bytes(b"\x00" * 64)
    series, unreadable, ignored = find_dicom_series(sorted(str(p) for p in (tmp_path / "ct").iterdir()))
    assert len(series) == 1
    assert [(Path(p).name, r) for p, r in ignored] == [
        ("rtss.dcm", "DICOM object without an image to segment (Modality RTSTRUCT; no preamble)")
    ]
    assert [Path(p).name for p, _ in unreadable] == ["noise.dcm"]
