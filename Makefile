# Two commands on a fresh machine: `make demo` and `make test`. Each builds .venv first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint ui clean

$(BIN)/cm-datacopy: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

demo: $(BIN)/cm-datacopy
	$(BIN)/cm-datacopy demo

test: $(BIN)/cm-datacopy
	$(BIN)/ruff check cm_datacopy cm_datacopy_tests benchmarks
	$(BIN)/pytest $(PYTEST_ARGS)

ui: $(BIN)/cm-datacopy
	$(BIN)/cm-datacopy ui

lint: $(BIN)/cm-datacopy
	$(BIN)/ruff check cm_datacopy cm_datacopy_tests benchmarks
	$(BIN)/ruff format --check cm_datacopy cm_datacopy_tests

clean:
	rm -rf $(VENV) .demo .demo-ui
