# The two commands in README.md: `make run` (install + start tlsgate) and `make test` (install + all tests).
# Everything installs from the hash-pinned lock files into .venv; nothing is taken from the system Python.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
ARGS   ?=

.PHONY: run test prereqs lint lock clean try-mitmproxy

$(VENV)/.runtime: requirements.lock pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else "tlsgate needs Python >= 3.12 (mitmproxy 12), but $(PYTHON) is " + sys.version.split()[0] + ": run make with PYTHON=python3.12")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps -r requirements-dev.lock
	@touch $@

# The same policy set as the container (`--policy policies/`): a file added to policies/ is live in both.
POLICY ?= policies/

run: $(VENV)/.runtime
	$(BIN)/tlsgate run --policy $(POLICY) $(ARGS)

# The system tools the live tests drive for real; .ci/run installs them. Checked up front, named in one message.
TOOLS := curl openssl nginx hey promtool ip iptables wireguard-go wg mosquitto_pub zbarimg chromium unshare setpriv aapt
APT   := curl openssl nginx hey prometheus iproute2 iptables wireguard-go wireguard-tools mosquitto-clients zbar-tools chromium aapt android-framework-res

prereqs:
	@missing=""; for tool in $(TOOLS); do command -v $$tool >/dev/null 2>&1 || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
	  echo "make test needs these programs:$$missing" >&2; \
	  echo "  Debian/Ubuntu: sudo apt-get install $(APT)   (.ci/run installs them as root)" >&2; \
	  exit 1; \
	fi

test: prereqs $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m mypy
	$(BIN)/python -m pytest -n auto $(ARGS)

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m mypy
	$(BIN)/tlsgate validate policies/ policies/examples/*.yaml

# Re-pin after changing dependencies in pyproject.toml (needs the registry). pip-compile keeps every existing pin it
# can: to move one on purpose, `make lock LOCK_ARGS="--upgrade-package mitmproxy --upgrade-package cryptography"`.
LOCK_ARGS ?=
lock: $(VENV)/.dev
	$(BIN)/python -m pip install --quiet pip-tools
	$(BIN)/pip-compile -q --generate-hashes --allow-unsafe --strip-extras $(LOCK_ARGS) -o requirements.lock pyproject.toml requirements-build.in
	$(BIN)/pip-compile -q --generate-hashes --allow-unsafe --strip-extras --extra test $(LOCK_ARGS) -o requirements-dev.lock pyproject.toml requirements-build.in

# Tries tlsgate on the newest mitmproxy (or MITMPROXY=12.4.0) in a throwaway venv: which pinned private functions
# changed (with their new digests), which unit tests fail, which versions moved. The repo, its lock and .venv stay.
MITMPROXY ?=
try-mitmproxy: $(VENV)/.dev
	$(BIN)/python scripts/try_mitmproxy.py $(if $(MITMPROXY),--version $(MITMPROXY)) $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info

# The documentation site (docs/, mkdocs.yml) into site/; --strict fails on a broken link or anchor, as in `make test`.
.PHONY: docs
docs: $(VENV)/.dev
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict
