# Two entry points (see README): `make bench` and `make test`. Each makes its own virtualenv with
# the pinned CPU build of torch, builds the extension in place, then runs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
JOBS ?= $(shell nproc)

.PHONY: venv build test bench bench-deps data cuda-check clean

venv: $(VENV)/.installed
$(VENV)/.installed: Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=23" "setuptools>=64" wheel
	$(PY) -m pip install -q torch==$(TORCH_VERSION) numpy pytest ninja
	touch $@

build: venv
	MAX_JOBS=$(JOBS) $(PY) -m pip install -q --no-build-isolation --no-deps -e .

test: build
	$(PY) -m pytest -q tests

clean:
	rm -rf build *.egg-info pyfusedbn/*.so
