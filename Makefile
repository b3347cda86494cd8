# Two commands for a new user:  `make demo`  and  `make test`.
# Both create .venv (Python >= 3.12) on first use and install gpuzarr into it with the
# extra the target needs: `demo` (numba, rich, tqdm, psutil, nvidia-ml-py), `test` (the test
# stack), `bench` (plots and the other readers). EXTRAS=... overrides it, e.g.
# `make demo EXTRAS=demo,gpu` or `make test-gpu EXTRAS=test,gpu`.

PYTHON ?= $(shell command -v python3.12 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
GPU_TEST_EXTRAS := test,gpu

.PHONY: demo test test-gpu kernels bench clean

# $(call install,EXTRAS): the venv with gpuzarr[EXTRAS], reinstalled when pyproject.toml changes.
# pip runs without -q so its progress (downloads, builds) shows while it works.
define install
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else "gpuzarr needs Python >= 3.12 (found " + sys.version.split()[0] + "); set PYTHON=/path/to/python3.12")'
	@test -x $(PY) || { echo "creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); }
	@$(PY) -m pip --version >/dev/null 2>&1 || $(PY) -m ensurepip --upgrade
	@if [ ! -f "$(VENV)/.installed-$(1)" ] || [ pyproject.toml -nt "$(VENV)/.installed-$(1)" ]; then \
		echo "installing gpuzarr[$(1)] into $(VENV) (first run: a minute or more)"; \
		$(PY) -m pip install --upgrade --progress-bar on pip && \
		$(PY) -m pip install --progress-bar on -e ".[$(1)]" && \
		touch "$(VENV)/.installed-$(1)"; \
	fi
endef

demo:   ## set up, write the demo dataset, load random crops, print a table
	$(call install,$(or $(EXTRAS),demo))
	$(VENV)/bin/gpuzarr demo

test:   ## the suite (CPU engine on its compiled lane), the oracle tests on the Python path, the GPU tests on the CPU emulation of CUDA
	$(call install,$(or $(EXTRAS),test))
	$(PY) -m pytest -q
	GPUZARR_CPU__COMPILED=off $(PY) -m pytest -q tests/test_oracle.py tests/test_error_naming.py \
		tests/test_native_codecs.py tests/test_fault_injection.py
	GPUZARR_EMULATE_GPU=1 $(PY) -m pytest -q -m gpu

test-gpu:   ## only the GPU tests (needs CUDA, CuPy, nvCOMP: EXTRAS=test,gpu)
	$(call install,$(or $(EXTRAS),$(GPU_TEST_EXTRAS)))
	$(PY) -m pytest -q -m gpu

kernels:   ## compile every kernels/*.cu with nvcc for sm_80 and sm_90
	bash scripts/compile_kernels.sh

bench:
	$(call install,$(or $(EXTRAS),bench))
	$(VENV)/bin/gpuzarr bench --preset full

clean:
	rm -rf $(VENV) bench-out demo-data
