# Everything builds .venv from nothing with only python3 on the machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test typecheck bench bench-console clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/elipc serve

# The suite (mypy included, as tests/test_types.py) on every core: the end-to-end tests
# spend their time waiting on processes.
test: $(STAMP)
	$(BIN)/python -m pytest -n auto

typecheck: $(STAMP)
	$(BIN)/python -m mypy

bench: $(STAMP)
	$(BIN)/python bench/run.py
	$(BIN)/python bench/console.py

# The console alone: first paint with 1,000 channels, a send to the screen, 50 consoles' cost.
bench-console: $(STAMP)
	$(BIN)/python bench/console.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
