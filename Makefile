# Everyday targets. `make demo` and `make test` set everything up from nothing.
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.qlp-installed
VLLM_VENV ?= .venv-vllm
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export RAY_USAGE_STATS_ENABLED := 0
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-unit test-integration lint format bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU build of torch first, pinned, so nothing pulls a CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

demo: setup
	$(VENV)/bin/qlp demo $(DEMO_ARGS)

test: setup
	$(PY) -m pytest -q -ra --timeout=900 --durations=40 --ignore=tests/vllm tests
	@# tests/vllm in the vLLM venv (scripts/vllm_venv.sh; CI installs it in the background: wait)
	@if [ -e $(VLLM_VENV)/.install.lock ]; then flock $(VLLM_VENV)/.install.lock true; fi
	@if [ -f $(VLLM_VENV)/.qlp-vllm-installed ]; then \
	  $(VLLM_VENV)/bin/python -m pytest -q -ra --timeout=900 --durations=10 tests/vllm; \
	else echo "tests/vllm NOT RUN: no $(VLLM_VENV) (bash scripts/vllm_venv.sh installs it)"; \
	  if [ -n "$$QLP_REQUIRE_VLLM" ]; then echo "QLP_REQUIRE_VLLM is set: failing"; exit 1; fi; fi

test-unit: setup
	$(PY) -m pytest -q -ra -m "not integration" tests

test-integration: setup
	$(PY) -m pytest -q -ra -m integration tests

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-logo  # layer contracts in pyproject.toml

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: setup
	@for b in benchmarks/[!_]*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf build *.egg-info qlp_ray/*.so cython_ext/*.c .pytest_cache .ruff_cache
