"""Batch inference over folders of NIfTI files, 2D images and DICOM series: the engine (:mod:`.engine`), the engine
a bundle configures (:mod:`.bundle`, :func:`~pipeline.inference.bundle.from_bundle`), cases (:mod:`.cases`), output
writers (:mod:`.writers`), model set-up (:mod:`.model`) and the run report (:mod:`.report`)."""
