# Each target bootstraps a fresh machine on its own: .venv, pinned torch first, then the package.
# For a CUDA build: make test TORCH_SPEC="torch==2.13.0" TORCH_PIP_ARGS="--index-url <your CUDA wheel index>"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo_out
# dicom-seg (highdicom) too, so the DICOM SEG tests run instead of being skipped
EXTRAS ?= dev,dicom-seg,imagenet
# glibc malloc tuning: 8-19 % faster CPU training step on an idle machine, more under load (docs/benchmarks.md ## malloc).
export MALLOC_MMAP_MAX_ ?= 0
export MALLOC_TRIM_THRESHOLD_ ?= 100000000000
export PYTHONUNBUFFERED := 1

.PHONY: install test lint demo demo-2d clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check pipeline tests benchmarks
	$(PY) -m ruff format --check pipeline tests benchmarks
	$(PY) -m mypy

demo: $(STAMP)
	$(PY) -m pipeline demo $(DEMO_DIR)

demo-2d: $(STAMP)
	$(PY) -m pipeline demo --dims 2 $(DEMO_DIR)_2d

clean:
	rm -rf $(DEMO_DIR) $(DEMO_DIR)_2d .pytest_cache .mypy_cache .ruff_cache
