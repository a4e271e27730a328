# Set-up and test entry points; README.md and .ci/run call these targets.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup test demo bench mutation

setup: $(VENV)/.installed

$(VENV)/.installed: engine/pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e "engine[test]"
	$(PY) -m pip install --quiet slicer-core==5.13.31053.0 psutil PyQt5==5.15.11  # PyQt5: the .ui check (Testing/slicer/test_slicer_ui.py)
	touch $@

test: setup
	$(PY) -m pytest -q -n 2 --dist loadfile Testing  # pytest-xdist: 2 workers, one torch thread each (Testing/conftest.py)

demo: setup
	$(VENV)/bin/lungddpm demo --output lungddpm-demo

bench: setup
	$(PY) bench/engine_cpu.py

mutation: setup  # not in CI: cosmic-ray over the core modules (tools/mutation.py); hours for all of CORE (README: --sample)
	$(PY) tools/mutation.py
