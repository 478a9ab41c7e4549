# One command each for a new user: `make demo` and `make test`.
# Both create .venv and install the project into it when it is missing
# (`make demo` without the test extras, which bring PyTorch).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-all install clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.installed: setup.py | $(PY)
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: setup.py | $(PY)
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed-test

demo: $(VENV)/.installed
	$(PY) tools/demo.py

test: $(VENV)/.installed-test
	$(PY) -m pytest -q -m "not slow" tests

test-all: $(VENV)/.installed-test
	$(PY) -m pytest -q tests

clean:
	rm -rf runs/demo .pytest_cache
