# The two commands of the README: `make serve` and `make test`. Both build what they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export WAYGATE_DATA_DIR ?= $(CURDIR)/var

.PHONY: serve test bench install install-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel

# Reinstall when the package metadata changes (the stamp records the last install).
# The distribution was called "waygate" before it became waygate-mcp: a venv made before
# the rename drops the old one, whose entry points would otherwise linger.
$(VENV)/.installed: $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/python -m pip uninstall --quiet --yes waygate 2>/dev/null || true
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed setup.cfg scripts/install-system-tools \
		scripts/install-conformance tests/conformance/package-lock.json \
		scripts/install-axe tests/axe/package-lock.json \
		scripts/install-upstreams tests/upstreams/package-lock.json
	$(BIN)/python -m pip install --quiet -e '.[test]'
	bash scripts/install-system-tools
	bash scripts/install-conformance
	bash scripts/install-axe
	bash scripts/install-upstreams
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

serve: install
	$(BIN)/waygate migrate
	$(BIN)/waygate keys bootstrap
	$(BIN)/waygate serve

test: install-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Load tests on loopback against the stack's ceiling and the official MCP server (bench/).
bench: install-test
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache tests/conformance/node_modules tests/axe/node_modules \
		tests/upstreams/node_modules
