"""Bundle exchange between sites: ``pack_bundle``, ``verify_bundle``, ``import_bundle``, ``open_verified_bundle``.

A MONAI bundle is code (``$`` expressions, ``_target_``, ``logging.conf``, pickled checkpoints), so a received
bundle is treated as data: an Ed25519 signature by a trusted key (:mod:`pipeline.share.signing`), the sha256 of the
very bytes extracted, safe zip entries, manifest hashes, the metadata schema (offline), every config compared with
the receiver's own templates (:mod:`pipeline.share.templates`: only their code, plus literal parameters), the
toolkit's own ``logging.conf``, finite weights loaded with ``weights_only=True``; the network is built from the
receiver's template, never from the received config. See ``docs/sharing-bundles.md``.
"""
