# The two commands in README.md: `make run` (install + start tlsgate) and `make test` (install + all tests).
# Everything installs from the hash-pinned lock files into .venv; nothing is taken from the system Python.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
ARGS   ?=

.PHONY: run test lint lock clean

$(VENV)/.runtime: requirements.lock pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else "tlsgate needs Python >= 3.12 (mitmproxy 12), but $(PYTHON) is " + sys.version.split()[0] + ": run make with PYTHON=python3.12")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps -r requirements-dev.lock
	@touch $@

run: $(VENV)/.runtime
	$(BIN)/tlsgate run $(ARGS)

test: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n auto $(ARGS)

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/tlsgate validate policies/ policies/examples/*.yaml

# Re-pin after changing dependencies in pyproject.toml (needs the registry).
lock: $(VENV)/.dev
	$(BIN)/python -m pip install --quiet pip-tools
	$(BIN)/pip-compile -q --generate-hashes --allow-unsafe --strip-extras -o requirements.lock pyproject.toml requirements-build.in
	$(BIN)/pip-compile -q --generate-hashes --allow-unsafe --strip-extras --extra test -o requirements-dev.lock pyproject.toml requirements-build.in

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
