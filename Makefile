# Two entry points for a fresh machine: `make demo` and `make test`.
# Each creates or refreshes .venv itself (re-installs when pyproject.toml changes).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.trapkit-installed
# The one real-browser test drives Debian's chromium through Playwright (no browser download).
CHROMIUM := /usr/bin/chromium
# libjpeg-turbo's headers, for trapkit's compiled region decoder (trapkit/_jpeg_region.c;
# trapkit/_resample.c, its crop resampler, needs only the compiler).
# Without them pip still installs trapkit, which then decodes whole JPEGs with Pillow;
# the tests insist on the compiled decoder, so `make test` installs them first.
JPEG_HEADERS := /usr/include/jpeglib.h
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test test-fast clean

$(STAMP): pyproject.toml Makefile trapkit/_jpeg_region.c trapkit/_resample.c
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

$(JPEG_HEADERS):
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends gcc libc6-dev libjpeg-dev

test: $(JPEG_HEADERS) $(STAMP) $(CHROMIUM)
	bash tests/triton_env.sh  # the Triton stub's own small environment (NumPy < 2)
	$(VENV)/bin/pytest

# Everything but the tests that start real servers and browsers.
test-fast: $(JPEG_HEADERS) $(STAMP)
	$(VENV)/bin/pytest -m "not slow"

clean:
	rm -rf $(VENV) build dist *.egg-info trapkit/*.so
