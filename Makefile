# One command each for a new user: `make demo` and `make test`.
# Both create .venv and install the project into it when it is missing
# (`make demo` without the test extras, which bring PyTorch).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Two pytest workers, each taking the next test as it frees up: the suite
# mixes in-process tests with ones waiting on a fresh process.
PYTEST := $(PY) -m pytest -q -n 2 --dist worksteal

.PHONY: demo test test-all test-portability install clean

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

# The fast tier under other float orders, as another CPU would add: 1, 2
# and 4 TensorFlow threads per test process, then TensorFlow's own kernels
# instead of oneDNN's. No test may assert a number only one of these
# produces. Four passes of `make test`.
test-portability: $(VENV)/.installed-test
	for threads in 1 2 4; do \
	    echo "== TF_NUM_INTRAOP_THREADS=$$threads"; \
	    TF_NUM_INTRAOP_THREADS=$$threads $(PYTEST) -m "not slow" tests \
	        || exit 1; \
	done
	@echo "== TF_ENABLE_ONEDNN_OPTS=0"
	TF_ENABLE_ONEDNN_OPTS=0 $(PYTEST) -m "not slow" tests

clean:
	rm -rf runs/demo .pytest_cache
