# `make demo` and `make test` create the virtual environment when it is missing, then run.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
ARCH := $(shell uname -m)
# torch + torchvision pairs that install and import together on the CPU (x86_64: from local wheels here)
ifeq ($(ARCH),aarch64)
TORCH_PINS ?= torch==2.9.1 torchvision==0.24.1
else
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
endif
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export PYTHONUNBUFFERED ?= 1

.PHONY: demo test test-slow test-all env weights clean-lake sql

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

env: $(VENV)/.installed

# IQA weights without the model hubs: NIQE parameters from basicsr's sdist (pip downloads it from the
# package index), ST-LPIPS from stlpips-pytorch; a missing file fails, so the next make retries
weights/.seeded: $(VENV)/.installed
	$(PY) -m evaluation.metrics seed --weights weights
	touch $@

weights: weights/.seeded

demo: $(VENV)/.installed weights/.seeded
	$(PY) pipelines/full.py --config configs/demo.yaml $(ARGS)

# the default suite: everything but the tests marked slow (a few minutes on 2 cores)
test: $(VENV)/.installed
	$(PY) -m pytest -q -m "not slow" $(ARGS)

# end-to-end runs: Ray jobs, kills and resumes, multi-node, training to a loss target (CI runs these too)
test-slow: $(VENV)/.installed
	$(PY) -m pytest -q -m "slow" $(ARGS)

test-all: $(VENV)/.installed
	$(PY) -m pytest -q $(ARGS)

sql: $(VENV)/.installed
	$(PY) -m catalog.sql $(ARGS)

clean-lake:
	rm -rf lake
