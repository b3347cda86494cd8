# Two commands for a new user:  `make demo`  and  `make test`.
# Both create .venv (Python >= 3.12) on first use and install gpuzarr into it.

PYTHON ?= $(shell command -v python3.12 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
EXTRAS ?= test

.PHONY: demo test test-gpu kernels bench clean

$(VENV)/.installed-$(EXTRAS): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else "gpuzarr needs Python >= 3.12 (found " + sys.version.split()[0] + "); set PYTHON=/path/to/python3.12")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	@touch $@

demo: $(VENV)/.installed-$(EXTRAS)   ## set up, write the demo dataset, load random crops, print a table
	$(VENV)/bin/gpuzarr demo

test: $(VENV)/.installed-$(EXTRAS)   ## the test suite, then the GPU tests once more under the CPU emulation of CUDA
	$(PY) -m pytest -q
	GPUZARR_EMULATE_GPU=1 $(PY) -m pytest -q -m gpu

test-gpu: $(VENV)/.installed-$(EXTRAS)   ## only the GPU tests (needs CUDA, CuPy, nvCOMP: EXTRAS=test,gpu)
	$(PY) -m pytest -q -m gpu

kernels:   ## compile every kernels/*.cu with nvcc for sm_80 and sm_90
	bash scripts/compile_kernels.sh

bench: $(VENV)/.installed-$(EXTRAS)
	$(VENV)/bin/gpuzarr bench --preset full

clean:
	rm -rf $(VENV) bench-out demo-data
