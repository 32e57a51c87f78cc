# Two entry points that work on a fresh clone with Python 3.11+:
#   make test   - unit, integration and hardware-in-the-loop tests (virtual boards); installs
#                 the Debian packages the tests use when missing (.ci/system-packages)
#   make demo   - a virtual testbed: broker, gateway, registry and virtual nodes, live readings
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test lint demo bench venv clean system-packages

venv: $(STAMP)

# Recreated when pyproject.toml changes (a stale venv is the classic "works on my machine").
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed (found %s); set PYTHON=python3.11" % sys.version.split()[0])'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing into $(VENV) from pyproject.toml (extras: test) ..."
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $@

system-packages:
	@bash .ci/system-packages

# The layers (docs/architecture.md, contracts in pyproject.toml) and ruff's rule set.
lint: $(STAMP)
	$(BIN)/ruff check --quiet .
	$(BIN)/lint-imports --no-cache

test: $(STAMP) system-packages lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	@$(BIN)/python -m testbed.demo $(DEMO_ARGS)

bench: $(STAMP) system-packages
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
