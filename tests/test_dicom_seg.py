"""DICOM SEG written for a real CT series (dcmqi's three GE slices, empty SpecificCharacterSet): it passes dciodvfy
with zero errors, references the source instances, names and codes its segments from the class names, keeps an
empty class as a segment, and reads back (highdicom) equal to the label map in the source grid — binary and
fractional. Skipped without ``../shared/data`` or highdicom; the dciodvfy check without dicom3tools."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipeline.data.dicom_seg import segment_concepts, write_dicom_seg
from pipeline.data.dicom_series import find_dicom_series, read_series, series_geometry

SRC = Path(__file__).resolve().parents[2] / "shared" / "data" / "dcmqi_ct_seg" / "ct-3slice"
pytestmark = pytest.mark.skipif(not SRC.is_dir(), reason="../shared/data/dcmqi_ct_seg is absent")
hd = pytest.importorskip("highdicom")
NAMES = {0: "background", 1: "liver", 2: "bone", 3: "lesion"}  # lesion: no voxel, still a segment


@pytest.fixture(scope="module")
def ct():
    series, _, _ = find_dicom_series(sorted(str(p) for p in SRC.glob("*.dcm")))
    volume, _ = read_series(series[0])
    labels = np.zeros(volume.shape, np.uint8)
    labels[(volume > -100) & (volume < 100)] = 1
    labels[volume > 200] = 2
    return series[0], labels


def _dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    proc = subprocess.run([shutil.which("dciodvfy"), str(path)], capture_output=True, text=True)
    lines = (proc.stdout + proc.stderr).splitlines()
    return [x for x in lines if x.startswith("Error")], sorted({x for x in lines if x.startswith("Warning")})


@pytest.mark.parametrize("fractional", [False, True], ids=["binary", "fractional"])
def test_seg_validates_references_and_round_trips(ct, tmp_path, fractional):
    import pydicom

    series, labels = ct
    probs = np.stack([(labels == v) * 0.8 for v in NAMES], axis=-1).astype(np.float32) if fractional else None
    path = tmp_path / "seg.dcm"
    path.write_bytes(write_dicom_seg(series, labels, NAMES, probs))
    seg = hd.seg.segread(path)
    assert seg.SegmentationType == ("FRACTIONAL" if fractional else "BINARY")
    # segments: one per class but background, numbered by label value, labelled and coded by name
    assert [(s.SegmentNumber, s.SegmentLabel) for s in seg.SegmentSequence] == [
        (1, "liver"),
        (2, "bone"),
        (3, "lesion"),
    ]
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"  # SNOMED CT Liver
    lesion = seg.SegmentSequence[2].SegmentedPropertyCategoryCodeSequence[0]
    assert lesion.CodeMeaning == "Morphologically Abnormal Structure"
    # references the source instances, in the order along the slice normal
    sources = [pydicom.dcmread(s.path, stop_before_pixels=True) for s in series.slices]
    uids = [ds.SOPInstanceUID for ds in sorted(sources, key=lambda d: float(d.ImagePositionPatient[2]))]
    referenced = [i.ReferencedSOPInstanceUID for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence]
    assert sorted(referenced) == sorted(uids)
    # read back per source instance (in order along the normal): equal to the label map in the source grid
    in_order = [pydicom.dcmread(s.path, stop_before_pixels=True).SOPInstanceUID for s in series_geometry(series)[0]]
    pixels = seg.get_pixels_by_source_instance(in_order, segment_numbers=[1, 2, 3], combine_segments=not fractional)
    if fractional:
        assert pixels.shape == (3, 512, 512, 3)
        np.testing.assert_allclose(pixels[..., 1], (labels == 2).transpose(2, 1, 0) * 0.8, atol=1 / 255)
        assert pixels[..., 2].max() == 0  # the empty class is an empty segment
    else:
        np.testing.assert_array_equal(pixels, labels.transpose(2, 1, 0))
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (dicom3tools) is not installed; the SEG was checked with highdicom only")
    errors, warnings = _dciodvfy(path)
    assert errors == []
    # the one warning is the source's own one-component Patient's Name, copied as DICOM requires
    assert all("Patient's Name" in w for w in warnings), warnings


@pytest.mark.parametrize(
    ("name", "category", "meaning"),
    [
        ("liver", "Anatomical Structure", "Liver"),
        ("spinal cord", "Anatomical Structure", "Spinal cord"),
        ("Hippocampus", "Anatomical Structure", "Hippocampus"),
        ("lesion", "Morphologically Abnormal Structure", "Lesion"),
        ("liver_tumor", "Morphologically Abnormal Structure", "Lesion"),
        ("grain", "Tissue", "Tissue"),
    ],
)
def test_segment_concepts_by_name(name, category, meaning):
    cat, typ = segment_concepts(name)
    assert cat.meaning == category and typ.meaning.lower() == meaning.lower()


# ------------------------------------------------------------------------------------------------ DICOM SEG as labels
SEG_DIR = SRC.parent


def test_seg_labels_map_segments_by_name_in_the_series_grid(ct):
    from pipeline.data.dicom_seg import read_seg_labels

    series, _ = ct
    labels, affine = read_seg_labels(SEG_DIR / "liver.dcm", ["background", "LIVER"])  # names match case-insensitively
    _, series_affine = read_series(series)
    assert labels.shape == (512, 512, 3) and labels.dtype == np.uint8
    np.testing.assert_allclose(affine, series_affine, atol=1e-3)
    seg = hd.seg.segread(SEG_DIR / "liver.dcm")
    assert int((labels == 1).sum()) == int(np.asarray(seg.get_volume().array).sum()) == 107098


def test_seg_labels_refuse_unknown_segment_names_with_the_list():
    from pipeline.data.dicom_seg import read_seg_labels
    from pipeline.data.dicom_series import DicomError

    with pytest.raises(
        DicomError, match=r"segment label\(s\) \['GREEN', 'ORANGE', 'PURPLE', 'LIGHT_BLUE', 'DARK_BLUE'\] "
    ):
        read_seg_labels(SEG_DIR / "partial_overlaps.dcm", ["background", "liver"])


def test_overlapping_segments_resolve_to_the_higher_class(caplog):
    from pipeline.data.dicom_seg import read_seg_labels

    names = ["background", "green", "orange", "purple", "light_blue", "dark_blue"]
    labels, _ = read_seg_labels(SEG_DIR / "partial_overlaps.dcm", names)
    volume = hd.seg.segread(SEG_DIR / "partial_overlaps.dcm").get_volume(combine_segments=False)
    masks = np.asarray(volume.array).transpose(2, 1, 0, 3) > 0  # (X, Y, Z, segment), segment s = class s + 1
    lps = np.asarray(volume.affine)[:, [2, 1, 0, 3]]
    if np.dot(lps[:3, 2], np.cross(lps[:3, 0], lps[:3, 1])) < 0:  # read_seg_labels orders slices along the normal
        masks = masks[:, :, ::-1]
    expected = np.where(masks.any(-1), masks.shape[-1] - np.argmax(masks[..., ::-1], axis=-1), 0)
    np.testing.assert_array_equal(labels, expected)  # the highest class present wins
    assert (masks.sum(-1) > 1).sum() > 0 and "higher class index wins" in caplog.text


def test_a_seg_label_trains_in_the_image_grid(ct, tmp_path):
    """A dataset whose label is the SEG a PACS exported: the chain reads it by class name and resamples it into the
    image's grid (here an image with one more slice than the SEG covers)."""
    import nibabel as nib

    from pipeline.transforms.chains import val_transforms

    series, _ = ct
    volume, affine = read_series(series)
    taller = np.concatenate([volume, np.full(volume.shape[:2] + (1,), -1000.0, np.float32)], axis=-1)
    nib.save(nib.Nifti1Image(taller, affine), tmp_path / "ct.nii.gz")
    chain = val_transforms(3, pixdim=None, crop_foreground=False, class_names=["background", "liver"])
    out = chain({"image": str(tmp_path / "ct.nii.gz"), "label": str(SEG_DIR / "liver.dcm")})
    assert tuple(out["label"].shape) == tuple(out["image"].shape) == (1, 512, 512, 4)
    assert int((out["label"] == 1).sum()) == 107098 and int(out["label"][..., 3].sum()) == 0
    with pytest.raises(Exception, match=r"liver\.dcm: .*needs the model's class_names"):
        val_transforms(3, pixdim=None)({"image": str(tmp_path / "ct.nii.gz"), "label": str(SEG_DIR / "liver.dcm")})
