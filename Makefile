# Two commands a newcomer needs (see README.md):
#   make demo       set up .venv, then run stages 2 -> 4 on the shipped example into runs/demo/
#   make test       set up .venv with the test tools, then lint and run the whole suite (CI)
#   make test-fast  the same without the tests marked slow: the edit-run loop (under 2 minutes)
# Both create a local virtual environment (.venv) from the pinned requirements and
# the package (pip install -e .) on first use and reuse it afterwards.

PYTHON ?= python3   # the interpreter that creates .venv: make PYTHON=python3.12 demo
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test test-fast lint clean-venv

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] <= (3, 12) else "Python 3.11 or 3.12 is needed (found " + sys.version.split()[0] + "); pick another interpreter with: make PYTHON=python3.11 ...")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The pinned libraries, then the package itself, editable: scripts, notebooks, tools and
# tests import `breastdensity` from myproject/breastdensity/ as it is edited.
$(VENV)/.runtime-installed: requirements.txt pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.dev-installed: requirements-dev.txt $(VENV)/.runtime-installed
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $@

# Outputs go to runs/demo/ (ignored by git), so the shipped results stay as committed;
# `cd myproject && python Run_Example.py` regenerates the shipped ones in place.
demo: $(VENV)/.runtime-installed
	cd myproject && ../$(BIN)/python Run_Example.py --predictions-dir ../runs/demo/Prediction \
		--maps-dir ../runs/demo/MAPS --executed-dir ../runs/demo/executed

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest

test-fast: lint
	$(BIN)/python -m pytest -m "not slow"

clean-venv:
	rm -rf $(VENV)
