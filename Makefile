# The README's two commands: `make demo` and `make test`. Each creates .venv when missing,
# installs the project into it, and runs.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# torch for a machine without an NVIDIA GPU: a local CPU wheel when pip can find one
# (--no-index: no download), else the CPU build from PyTorch's own index.
TORCH_CPU_VERSION ?= 2.13.0
TORCH_CPU_INDEX   ?= https://download.pytorch.org/whl/cpu
HAS_NVIDIA := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo yes)

.PHONY: demo test test-fast install clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
ifeq ($(HAS_NVIDIA),)
	$(PY) -c "import torch" 2>/dev/null \
	  || ($(PIP) install --no-index --no-deps "torch==$(TORCH_CPU_VERSION)" && $(PIP) install "torch==$(TORCH_CPU_VERSION)") \
	  || $(PIP) install torch --index-url $(TORCH_CPU_INDEX)
endif
	$(PIP) install -e ".[dev]"
	touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed
	$(PY) -m pytest -q

# The unit tier alone (no real Ray, no multi-process MLflow): for quick iteration.
test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -m "not integration"

demo: $(VENV)/.installed
	$(PY) -m gmlp_ablate.demo

clean:
	rm -rf $(VENV) reports mlflow.db .cache
