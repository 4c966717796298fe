"""The model: :class:`~pipeline.networks.unet.PretrainedUNet` and its named stages (no file I/O), pretrained weights
(read, align, load; :mod:`.weights`, :mod:`.sources`), freezing and per-stage parameter groups (:mod:`.stages`) and
layer drift (:mod:`.drift`)."""
