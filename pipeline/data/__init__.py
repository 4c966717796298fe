"""Where cases come from: datalists (MSD ``dataset.json``, folder pairing, the one case id), readers (2D images,
DICOM series and DICOM SEG) and synthetic two-site phantoms (2D and 3D)."""
