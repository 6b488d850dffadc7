# The two commands of the README: `make demo` and `make test`. Each sets up the virtual
# environment from pyproject.toml first (once; again when pyproject.toml changes).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# Generate the sample corpus, run the sample workflow on an embedded LocalCluster, print
# the summary. The corpus holds a few deliberately corrupt files: the run records them as
# failed (exit code 1 from `dagflow run`), which is the expected outcome here.
demo: $(STAMP)
	$(BIN)/dagflow sample-data sample-data
	$(BIN)/dagflow run examples/thumbnails.yaml --input sample-data --output out/demo; \
	  rc=$$?; if [ $$rc -gt 1 ]; then exit $$rc; fi
	@echo "outputs and records: out/demo (report and run directory under out/demo/_dagflow/runs)"

# The whole suite, slow tests included (what CI runs).
test: $(STAMP)
	$(BIN)/ruff check .
	sh scripts/ensure-chromium.sh
	$(BIN)/pytest

# Everything but the slow tests, for a quick loop while developing.
test-fast: $(STAMP)
	$(BIN)/pytest -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[test,bench]'
	$(BIN)/python -m benchmarks

clean:
	rm -rf out sample-data .pytest_cache
