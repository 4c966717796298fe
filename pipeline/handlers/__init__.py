"""Ignite handlers for the bundles' engines: staged unfreezing, drift, crash-safe checkpoints, per-class metrics and
validation images, progress."""
