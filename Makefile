# Two entry points, each doing its own set-up from a fresh clone:
#   make demo   creates .venv, installs convlayer, runs `convlayer demo`
#   make test   creates .venv, installs convlayer with its test extras, runs the suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q

.PHONY: demo test bench clean

$(VENV)/.base: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -e .
	touch $@

$(VENV)/.test: $(VENV)/.base
	$(PIP) install -e '.[test]'
	touch $@

demo: $(VENV)/.base
	$(VENV)/bin/convlayer demo

test: $(VENV)/.test
	$(PY) -m pytest -n 2 -q

bench: $(VENV)/.test
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
