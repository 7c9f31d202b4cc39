# Two commands (see README): `make reports` and `make test`. Both install what they need first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= cpu
STAMP := $(VENV)/.installed

.PHONY: install reports test lint clean-reports screenshot

$(STAMP): requirements.txt requirements-assets.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: an unpinned torch would pull several GB of CUDA wheels
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -r requirements-assets.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

reports: $(STAMP)
	$(PY) -m kdlib run --profile $(PROFILE)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q --durations=15

# the report index as a headless browser draws it (optional dependency: Qt WebEngine, ~200 MB)
screenshot: $(STAMP)
	$(PY) -m pip install -q -r requirements-screenshot.txt
	$(PY) -m kdlib.lab.screenshot reports/index.html reports/index.png

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean-reports:
	find reports -maxdepth 1 -type f ! -name RESULTS.md -delete
