# Two commands on a fresh machine: `make demo` and `make test`. Each builds .venv first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint ui clean

# pip prints what it downloads and builds: the first install takes a few minutes (dagster, pyarrow,
# the Snowflake connector and the embedded PostgreSQL are large).
$(BIN)/cm-datacopy: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install --progress-bar on -e ".[test]"
	touch $@

demo: $(BIN)/cm-datacopy
	$(BIN)/cm-datacopy demo

test: $(BIN)/cm-datacopy
	$(BIN)/ruff check cm_datacopy cm_datacopy_tests benchmarks
	$(BIN)/pytest -n 3 --dist loadfile $(PYTEST_ARGS)

ui: $(BIN)/cm-datacopy
	$(BIN)/cm-datacopy ui

lint: $(BIN)/cm-datacopy
	$(BIN)/ruff check cm_datacopy cm_datacopy_tests benchmarks
	$(BIN)/ruff format --check cm_datacopy cm_datacopy_tests

clean:
	rm -rf $(VENV) .demo .demo-ui
