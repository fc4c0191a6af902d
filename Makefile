# Set-up and checks. `make test` and `make demo` work on a fresh machine: they create the
# virtualenv, install torch and every dependency, and build the native op library.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
NATIVE_SOURCES := $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh') setup.py

.PHONY: install build demo test bench report clean

$(VENV)/.deps: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel ninja
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q numpy networkx tabulate optuna scipy "pytest>=8" pytest-xdist "triton>=3.1" transformers matplotlib pandas psutil joblib scikit-learn
	touch $@

# The op library (panther/_C*.so), rebuilt when a native source changes.
$(VENV)/.built: $(VENV)/.deps $(NATIVE_SOURCES)
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

install: $(VENV)/.built
build: $(VENV)/.built

# The main job: train, sketch, tune, compile and export a model on scikit-learn's digits (CPU, < 3 min).
demo: $(VENV)/.built
	$(PY) -m panther demo

test: $(VENV)/.built
	$(PY) -m pytest -q -n 2 tests

bench: $(VENV)/.built
	$(PY) -m benchmarks.bench_linear --device cpu --quick

# BENCHMARKS.md and its plots (docs/img/), generated from the JSON in benchmarks/results/.
report: $(VENV)/.deps
	$(PY) -m benchmarks.report

clean:
	rm -rf build $(VENV) panther/_C*.so *.egg-info
