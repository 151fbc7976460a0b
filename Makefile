# Two commands do all the set-up on a fresh clone (Python 3.11, no GPU):
#   make test   create .venv if absent, install pinned versions, run the whole test suite
#   make reproduce  the same set-up, then the main job: train, sample and evaluate DiffCSP and KLDM
#                   on Perov-5 (preset `cpu`, about 30 minutes on 2 cores), results under runs/
#   make book   the same set-up, then render the book and print where its index page is
# Options: make test FLAGS=slow   (also run notebook cells flagged `slow`)
#          make test PYTEST_ARGS="-k torus"

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FLAGS ?=
PYTEST_ARGS ?=
DATASET ?= perov_5
MODELS ?= kldm diffcsp
PRESET ?= cpu
JOBS ?= 2

# Offline first: nothing downloads model weights at run time.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
# Processed datasets are cached inside the build folder, not in the user's cache.
export CDB_CACHE_DIR ?= $(CURDIR)/_build/cache
# The data registry's mirror: the shared copy of the benchmark splits, when it is beside the clone.
ifneq ($(wildcard ../shared/data),)
export CDB_DATA_MIRROR ?= $(abspath ../shared/data)
endif

.PHONY: test reproduce book export clean-nbs lock clean help

help:
	@echo "make test    - set up .venv and run every test (notebooks, package, book, papermill)"
	@echo "make reproduce - the main job: DiffCSP and KLDM on Perov-5 (PRESET=smoke|cpu|paper, DATASET=, MODELS=)"
	@echo "make book    - set up .venv and render the book into _build/book/"
	@echo "make export  - regenerate crystal_diffusion_book/ from nbs/"
	@echo "make lock    - rewrite constraints.txt from the working .venv"

# torch==2.13.0 is the CPU build (on this kind of machine it is on disk); it must be in the same
# pip command as everything else, or a dependency pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check torch==2.13.0 -c constraints.txt -e ".[all]"
	@touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest tests --nb-flags="$(FLAGS)" $(PYTEST_ARGS)

reproduce: $(STAMP)
	$(BIN)/python ci/reproduce.py --dataset $(DATASET) --models $(MODELS) --preset $(PRESET) --jobs $(JOBS) --out runs

book: $(STAMP)
	$(BIN)/python tools/book.py --flags="$(FLAGS)"

export: $(STAMP)
	$(BIN)/nbdev-export

clean-nbs: $(STAMP)
	$(BIN)/nbdev-clean

lock:
	$(BIN)/python -m pip freeze --exclude-editable | grep -v -E '^(torch|crystal-diffusion-book)==' > constraints.txt

clean:
	rm -rf _build runs

# The GPU check (tools/gpu_check.py): bf16 train steps, a device-generator sampler run, checkpoint resume and a
# one-process NCCL DDP step for DiffCSP and KLDM at the papers' size; a JSON record in ci/results. Exits 0 without CUDA.
.PHONY: gpu-check
gpu-check: $(STAMP)
	$(BIN)/python tools/gpu_check.py --out ci/results/gpu_check.json
