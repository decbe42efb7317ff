# Two entry points for a fresh machine: `make demo` and `make test`.
# Each creates or refreshes .venv itself (re-installs when pyproject.toml changes).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.trapkit-installed
# The one real-browser test drives Debian's chromium through Playwright (no browser download).
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test test-fast clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	$(PY) -m pip install --quiet --no-deps "megadetector>=10"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/trapkit quickstart

$(CHROMIUM):
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends chromium

test: $(STAMP) $(CHROMIUM)
	bash tests/triton_env.sh  # the Triton stub's own small environment (NumPy < 2)
	$(VENV)/bin/pytest

# Everything but the tests that start real servers and browsers.
test-fast: $(STAMP)
	$(VENV)/bin/pytest -m "not slow"

clean:
	rm -rf $(VENV) build dist *.egg-info
