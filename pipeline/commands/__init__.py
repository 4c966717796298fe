"""One module per CLI verb; see :mod:`pipeline.cli`."""
