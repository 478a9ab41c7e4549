# One command each for a new user: `make demo` and `make test`.
# Both create .venv and install the project into it when it is missing
# (`make demo` without the test extras, which bring PyTorch).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Two pytest workers, each taking the next test as it frees up: the suite
# mixes in-process tests with ones waiting on a fresh process.
PYTEST := $(PY) -m pytest -q -n 2 --dist worksteal

.PHONY: demo test test-all install clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.installed: setup.py | $(PY)
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: setup.py | $(PY)
	$(PY) -m pip install --quiet -e ".[test,plot]"
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed-test

demo: $(VENV)/.installed
	$(PY) tools/demo.py

test: $(VENV)/.installed-test
	$(PYTEST) -m "not slow" tests

test-all: $(VENV)/.installed-test
	$(PYTEST) tests

clean:
	rm -rf runs/demo .pytest_cache
