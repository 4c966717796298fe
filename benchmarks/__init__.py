"""Benchmarks of the toolkit (not installed with the package): ``python -m benchmarks NAME ...`` from a source
checkout runs one, writes ``<out>/<name>.json`` and appends its rows to ``docs/benchmarks.md``."""
