"""Bundle exchange between sites: ``pack_bundle``, ``verify_bundle``, ``import_bundle``, ``open_verified_bundle``.

A MONAI bundle is code (``$`` expressions, ``_target_``, ``logging.conf``, pickled checkpoints), so a receiving site
verifies before it runs anything: safe zip entries, manifest hashes, metadata schema (offline, bundled schema),
weights with ``weights_only=True``, a static scan of every config (:mod:`pipeline.share.scan`), and only then is
``network_def`` instantiated (``verify_net_in_out``). See ``docs/sharing-bundles.md``.
"""
