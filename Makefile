# Two entry points (see README): `make bench` and `make test`. Each makes its own virtualenv with
# the pinned CPU build of torch, builds the extension in place, then runs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
JOBS ?= $(shell nproc)

.PHONY: venv build test check-imports test-cuda-emulated test-cuda-emulated-sanitize test-emulated-backend test-emulated-backend-sanitize test-sanitize test-lowest-torch test-huge test-zoo zoo-deps bench bench-full bench-deps data cuda-check cuda-build gpu-validate clean

venv: $(VENV)/.installed
$(VENV)/.installed: Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=23" "setuptools>=64" wheel
	$(PY) -m pip install -q torch==$(TORCH_VERSION) numpy pytest ninja matplotlib hypothesis
	touch $@

build: venv
	MAX_JOBS=$(JOBS) $(PY) -m pip install -q --no-build-isolation --no-deps -e .

# The emulated CUDA suites have their own targets (test-cuda-emulated, test-emulated-backend): they
# build their own drivers and library.
NOT_EMULATED := --ignore=tests/test_cuda_emulated.py --ignore=tests/test_cuda_emulated_mutations.py \
  --ignore=tests/test_emulated_backend.py --ignore=tests/test_emulated_backend_limits.py
test: build
	$(PY) -m pytest -q tests $(NOT_EMULATED)

# No import cycles inside pyfusedbn and benchmarks (imports inside functions count too); plain
# python, no venv needed. PACKAGES=benchmarks checks one.
PACKAGES ?= pyfusedbn benchmarks
check-imports:
	$(PYTHON) tools/check_import_cycles.py $(PACKAGES)

# The bad-input and edge-case tests (and the fuzzer's CI budget), and the GroupNorm ops (their
# per-sample kernel walk, the per-thread gradient cache, and their own fuzzer), and the BatchNorm
# channels_last walks (the reductions' gather buffers) and float16 planes (register blocks), on a
# build with AddressSanitizer + UndefinedBehaviorSanitizer, in build/sanitize (the in-place build
# is left alone).
SANITIZE_TESTS ?= -m "not slow" tests/test_errors.py tests/test_numerics.py tests/test_fuzz.py \
  tests/test_group_norm_ops.py tests/test_group_norm_parity.py tests/test_group_norm_fuzz.py \
  tests/test_parity.py::test_channels_last_walks tests/test_parity.py::test_float16_planes
test-sanitize: venv
	SANITIZE=1 bash tools/scratch_test.sh sanitize $(PY) -q $(SANITIZE_TESTS)

# Every CUDA kernel on the host, no GPU and no torch build needed: tools/cuda_emulator compiles
# csrc/cuda's kernel files with g++ against a CUDA execution emulator (build/cuda_emulated) and
# tests/cuda_emulated's drivers check each launcher against float64 in three scheduling orders,
# then each mutation in tests/test_cuda_emulated_mutations.py must turn that suite red.
# --noconftest: tests/conftest.py imports the built extension, which this does not need.
EMULATED_TESTS ?= tests/test_cuda_emulated.py tests/test_cuda_emulated_mutations.py
test-cuda-emulated: venv
	@start=$$(date +%s); $(PY) -m pytest -q -p no:cacheprovider --noconftest $(EMULATED_TESTS); rc=$$?; \
	  echo "test-cuda-emulated: $$(( $$(date +%s) - start )) s"; exit $$rc

# The same under AddressSanitizer + UndefinedBehaviorSanitizer (build/cuda_emulated_sanitize).
test-cuda-emulated-sanitize: venv
	@start=$$(date +%s); PYFUSEDBN_EMU_SANITIZE=1 $(PY) -m pytest -q -p no:cacheprovider --noconftest \
	  tests/test_cuda_emulated.py; rc=$$?; echo "test-cuda-emulated-sanitize: $$(( $$(date +%s) - start )) s"; exit $$rc

# The CUDA backend's host code without a GPU: tools/cuda_emulator/build.py --backend links the
# CUDA bindings, csrc/common, batch_norm and group_norm with the emulated kernels (sharing
# build/cuda_emulated's objects) into a test-only pyfusedbn._C registered for CPU tensors, which
# tests/emulated_backend.py loads (as a pytest plugin, before conftest imports pyfusedbn) in its
# own process; tests/test_emulated_backend.py runs the Python layer and the CPU suite's float64
# checks on it.
# Then GroupNorm with its limits lowered (PYFUSEDBN_EMU_LIMITS=1: its own library and process).
EMULATED_BACKEND = PYTHONPATH=tests:. $(PY) -m pytest -q -p no:cacheprovider -p emulated_backend
test-emulated-backend: venv
	@start=$$(date +%s); $(EMULATED_BACKEND) tests/test_emulated_backend.py && \
	  PYFUSEDBN_EMU_LIMITS=1 $(EMULATED_BACKEND) tests/test_emulated_backend_limits.py; rc=$$?; \
	  echo "test-emulated-backend: $$(( $$(date +%s) - start )) s"; exit $$rc

# The same built with AddressSanitizer + UndefinedBehaviorSanitizer (build/cuda_emulated_sanitize;
# python and torch are not instrumented: the ASan runtime is preloaded). Not in CI (time).
test-emulated-backend-sanitize: venv
	@start=$$(date +%s); PYFUSEDBN_EMU_SANITIZE=1 LD_PRELOAD="$$(g++ -print-file-name=libasan.so) $$(g++ -print-file-name=libstdc++.so)" \
	  ASAN_OPTIONS=detect_leaks=0:alloc_dealloc_mismatch=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  $(EMULATED_BACKEND) $(EMULATED_BACKEND_SANITIZE_ARGS) tests/test_emulated_backend.py; rc=$$?; \
	  echo "test-emulated-backend-sanitize: $$(( $$(date +%s) - start )) s"; exit $$rc
EMULATED_BACKEND_SANITIZE_ARGS ?= -x

# The lowest torch pyproject.toml supports, in its own venv and build directory: the CPU suite
# less its long tail (the full matrix runs on TORCH_VERSION in `make test`) and the tests that
# check only our own code's walks, not torch's API (the CUDA launch-geometry simulator, the CPU
# kernels' channels_last walks and float16 planes).
LOW_TORCH_VERSION ?= 2.11.0
LOW_VENV ?= .venv-torch$(LOW_TORCH_VERSION)
LOW_TORCH_TESTS ?= $(NOT_EMULATED) -m "not slow" -k "not test_every_activation_layout_dtype and not test_benchmarks_smoke \
  and not test_launch_geometry and not test_channels_last_walks and not test_float16_planes"
# Built at -O1: it checks torch's API, not speed, and compiles in less than half the time of -O3.
test-lowest-torch:
	$(MAKE) venv VENV=$(LOW_VENV) TORCH_VERSION=$(LOW_TORCH_VERSION)
	PYFUSEDBN_OPT_LEVEL=-O1 bash tools/scratch_test.sh torch-$(LOW_TORCH_VERSION) $(LOW_VENV)/bin/python -q tests $(LOW_TORCH_TESTS)

# More than 2^31 elements (tests/test_huge.py): ~14 GiB of memory; it skips, saying why, when
# less is free. CI's last step. Builds the extension only if it is missing (as test-zoo).
test-huge: venv
	@ls pyfusedbn/_C*.so >/dev/null 2>&1 || $(MAKE) build
	PYFUSEDBN_HUGE_TESTS=1 $(PY) -m pytest -q -rs tests/test_huge.py

# Real torchvision, timm and diffusers models (tests/test_zoo*.py, tests/test_timm.py,
# tests/test_diffusers.py; benchmarks.model_zoo).
# PyPI's torchvision wheel is built against CUDA torch, so with the CPU torch its compiled ops do
# not load; its Python parts, all that the models and timm use, do (pyfusedbn/testing/zoo.py
# declares the op schemas its import needs). --no-deps: its pin would pull the CUDA torch.
# diffusers (tests/test_diffusers.py) the same way, with what its import needs, pinned.
TORCHVISION_VERSION ?= 0.28.0
TIMM_VERSION ?= 1.0.31
DIFFUSERS_VERSION ?= 0.42.1
DIFFUSERS_IMPORT_DEPS ?= huggingface_hub==1.33.0 safetensors==0.8.0 regex==2026.12.2 \
	requests==2.34.2 urllib3==2.8.0 idna==3.21 certifi==2026.10.19.post1 httpx==0.29.0 \
	httpcore==1.0.9 anyio==4.16.0 h11==0.16.0 sniffio==1.3.1 importlib_metadata==10.2.0 \
	zipp==4.1.2 pyyaml==6.0.4 tqdm==4.70.1 filelock fsspec packaging pillow typing_extensions
zoo-deps: $(VENV)/.zoo-installed
$(VENV)/.zoo-installed: $(VENV)/.installed
	$(PY) -m pip install -q --no-deps torchvision==$(TORCHVISION_VERSION) timm==$(TIMM_VERSION) \
		diffusers==$(DIFFUSERS_VERSION) $(DIFFUSERS_IMPORT_DEPS)
	touch $@

# Builds the extension only if it is missing (after `make test`, as in CI, it is there).
test-zoo: zoo-deps
	@ls pyfusedbn/_C*.so >/dev/null 2>&1 || $(MAKE) build
	$(PY) -m pytest -q tests/test_timm.py tests/test_zoo*.py tests/test_diffusers.py

# Benchmarks (benchmarks/run.py): plots, progress bars and pytest-benchmark on top of the venv.
DATA_DIR ?= /usr/share/datasets/fashion-mnist

bench-deps: venv
	$(PY) -m pip install -q matplotlib tqdm pytest-benchmark

# Fashion-MNIST from Debian's package. When it cannot be installed, `bench` still runs the
# microbenchmarks (and synthetic training) and its report says what was skipped and why.
data:
	@if [ -d "$(DATA_DIR)" ]; then echo "data: $(DATA_DIR) present"; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  { $$sudo apt-get update && $$sudo apt-get install -y dataset-fashion-mnist; } || \
	  echo "data: could not install dataset-fashion-mnist; the training parts will be skipped"; \
	else echo "data: no apt-get here; the training parts will be skipped"; fi

bench: build bench-deps data
	$(PY) -m benchmarks.run --quick --data-dir $(DATA_DIR)

bench-full: build bench-deps data
	$(PY) -m benchmarks.run --full --data-dir $(DATA_DIR)

# Compile-checks the CUDA kernel files with nvcc (no GPU, no torch needed); part of CI.
cuda-check:
	bash tools/cuda_check.sh

# Builds the whole CUDA extension (bindings included) against a CUDA build of torch in its own
# venv, without running it: catches binding errors on a machine without a GPU. Not part of CI
# (it installs ~5.5 GB).
CUDA_VENV ?= .venv-cuda
cuda-build:
	bash tools/cuda_build.sh $(CUDA_VENV)

# On a GPU machine (its own python3 with a CUDA torch), in one call: build for this card's arch,
# CUDA tests, CUDA microbenchmarks, end-to-end benchmark, each under its own timeout (OUT=dir).
gpu-validate:
	bash tools/gpu_validate.sh

clean:
	rm -rf build *.egg-info pyfusedbn/*.so
