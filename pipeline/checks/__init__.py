"""Up-front validation of a dataset and a training configuration, so bad inputs fail in the first minute.

:func:`pipeline.checks.dataset.check_dataset` reports *every* problem of a 2D or 3D dataset (never just the first),
each naming the file, what was expected, what was found and the fix; ``spatial_dims`` picks the reader as the
transform chains do (:class:`pipeline.checks.images.CaseReader`: 3D headers without voxel data, DICOM series, or 2D
files with RGB-coded masks mapped by ``label_colors``). ``level="full"`` also checks every label (integer values in
the declared classes) and image (no NaN/Inf). :func:`pipeline.checks.dataset.check_training_data` is what both
bundles' ``training`` run calls (``data_check``) before the trainer starts; ``python -m pipeline check-data`` prints
the same report. Messages and fixes: ``docs/troubleshooting.md``.
"""
