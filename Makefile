# Two commands for a fresh machine with Python 3.11 and pip:
#   make train   trains the timeseries app on its embedded default data
#   make test    runs the whole test suite
# Both create .venv once (pinned torch, the apps' dependencies, pytest) and reuse it afterwards.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install train test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required, found " + sys.version'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[apps,dev]"
	touch $(STAMP)

train: $(STAMP)
	$(BIN)/python -m apps.timeseries train $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadgroup $(ARGS)

bench: $(STAMP)
	$(BIN)/python -m benchmarks.ops_cpu

clean:
	rm -rf $(VENV) runs outputs multirun .pytest_cache
