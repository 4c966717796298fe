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

from pipeline.data.dicom import find_dicom_series, read_series, segment_concepts, series_geometry, write_dicom_seg

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
