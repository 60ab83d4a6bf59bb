# avda: two commands for a fresh machine.
#   make demo   set up .venv and run the whole pipeline on the built-in dataset
#   make test   set up .venv and run the test suite
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-all lint bench clean chromium

# The venv is rebuilt only when pyproject.toml changes. The install is ~5.8 GB (torch and its
# CUDA libraries); --no-cache-dir keeps pip from writing a second copy of the wheels to ~/.cache.
$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH (set PYTHON=...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --no-cache-dir --upgrade pip
	$(BIN)/python -m pip install -q --no-cache-dir -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/avda demo

# The HTML-report test renders the page in headless Chromium (Debian package `chromium`).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=""; [ "$$(id -u)" -ne 0 ] && SUDO=sudo; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium; }

# The suite runs in TEST_WORKERS pytest-xdist processes (2: 1.6x faster than one on 2 cores);
# --dist loadfile keeps each module on one process, so a module's fixtures are computed once.
# `make test TEST_WORKERS=0` runs it in this process (pdb, -x). pytest exits 5 when it collects
# no test: treat that as a failure of the suite, loudly.
TEST_WORKERS ?= 2
XDIST := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)
test: $(STAMP) chromium
	$(BIN)/python -m pytest -q $(XDIST) --durations=25; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no tests were collected"; exit 1; fi; exit $$rc

test-all: $(STAMP) chromium
	$(BIN)/python -m pytest -q $(XDIST) -m ''

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
