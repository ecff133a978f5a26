# packsentry. `make test` sets everything up (virtualenv, node modules) and runs the suite.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PY_STAMP   := $(VENV)/.installed
NODE_STAMP := node_modules/.installed
# MicroPython's stubs replace CPython's typeshed for the firmware type check, so they live
# outside the venv's site-packages; firmware/pyrightconfig.json points here.
STUBS_DIR   := $(VENV)/micropython-stubs
STUBS_STAMP := $(STUBS_DIR)/.installed

.PHONY: bench demo test lint generate prereqs clean typecheck firmware

# A simulated depot through the real daemon, in compressed time; ends by itself (~3 min).
demo: prereqs $(PY_STAMP) $(NODE_STAMP)
	$(VENV)/bin/packsentry demo

# Every benchmark against its baseline in the same run -> bench/results/latest.{json,md}.
bench: prereqs $(PY_STAMP) $(NODE_STAMP)
	$(PY) -m bench

test: prereqs $(PY_STAMP) $(STUBS_STAMP) $(NODE_STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

lint: $(PY_STAMP)
	$(VENV)/bin/ruff check .

# Regenerate firmware/wire.py, protocol/vectors/*.json and docs/protocol.md from the schemas.
generate: $(PY_STAMP)
	$(PY) -m packsentry.protocol.generate
	$(PY) -m packsentry.host.limits

# Type-check firmware/ against MicroPython 1.27's ESP32 stubs (basedpyright).
typecheck: $(PY_STAMP) $(STUBS_STAMP)
	$(VENV)/bin/packsentry board typecheck

# Compile firmware/ with mpy-cross into build/firmware/ (.mpy files; main.py/boot.py stay .py).
firmware: $(PY_STAMP)
	$(VENV)/bin/packsentry board build

# System prerequisites: stop early, naming the Debian package, instead of failing obscurely.
prereqs:
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Debian packages python3 python3-venv" >&2; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "error: Python >= 3.11 needed, $(PYTHON) is $$($(PYTHON) -V 2>&1)" >&2; exit 1; }
	@$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || { echo "error: Python venv support missing; install Debian package python3-venv" >&2; exit 1; }
	@command -v node >/dev/null || { echo "error: node not found; install Debian packages nodejs npm (Node >= 20)" >&2; exit 1; }
	@node -e 'process.exit(Number(process.versions.node.split(".")[0]) < 20 ? 1 : 0)' || { echo "error: Node >= 20 needed, found $$(node --version)" >&2; exit 1; }
	@command -v npm >/dev/null || { echo "error: npm not found; install Debian package npm" >&2; exit 1; }
	@command -v mosquitto >/dev/null || test -x /usr/sbin/mosquitto || { echo "error: mosquitto not found; install Debian package mosquitto" >&2; exit 1; }

$(PY_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $@

$(STUBS_STAMP): $(PY_STAMP)
	rm -rf $(STUBS_DIR)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps \
		--target $(STUBS_DIR)/lib/site-packages $$($(PY) -c 'import tomllib; \
		print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["firmware-stubs"])')
	@touch $@

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

clean:
	rm -rf $(VENV) node_modules .pytest_cache .ruff_cache .hypothesis *.egg-info packsentry-demo
