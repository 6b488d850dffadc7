# The two commands of the README: `make demo` and `make test`. Each sets up the virtual
# environment first (once; again when pyproject.toml or the lock file changes), with
# exactly the versions of requirements/constraints.txt: those the suite was last green
# with. pyproject.toml keeps ranges, for users; the lock is for this repository's runs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONSTRAINTS := requirements/constraints.txt
# How packages are chosen: from the lock (empty for `make test-latest`), which extras.
PIN := -c $(CONSTRAINTS)
EXTRAS := test
# `make test-latest` installs the newest releases here; `make lock` pins what it holds.
LATEST := .venv-latest

.PHONY: demo test test-fast test-latest lock lint bench clean

$(STAMP): pyproject.toml $(wildcard $(CONSTRAINTS))
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(PIN) -e '.[$(EXTRAS)]'
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
	sh scripts/slurm-up.sh
	$(BIN)/pytest

# Everything but the slow tests, for a quick loop while developing.
test-fast: $(STAMP)
	$(BIN)/pytest -m "not slow"

# The same suite against the newest releases that pyproject.toml allows (no lock), in a
# fresh $(LATEST). When it passes, `make lock` pins exactly what it ran with.
test-latest:
	rm -rf $(LATEST)
	$(MAKE) test VENV=$(LATEST) PIN= EXTRAS=test,bench

# Write the lock from $(LATEST) (made with the newest releases first if missing): every
# package of the test and bench extras, pinned. After changing a dependency in
# pyproject.toml: `make test-latest lock`, then commit requirements/constraints.txt.
lock:
	test -f $(LATEST)/.installed || $(MAKE) $(LATEST)/.installed VENV=$(LATEST) PIN= \
	  EXTRAS=test,bench
	$(LATEST)/bin/python -c 'import platform as p; print("# The versions `make test` was last green with (CPython", p.python_version(), "on", p.system(), p.machine() + ").")' > $(CONSTRAINTS).tmp
	echo '# Written by `make lock` from $(LATEST); see "Dependencies" in README.md.' \
	  >> $(CONSTRAINTS).tmp
	$(LATEST)/bin/pip freeze --exclude-editable >> $(CONSTRAINTS).tmp
	mv $(CONSTRAINTS).tmp $(CONSTRAINTS)

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/pip install --quiet $(PIN) -e '.[test,bench]'
	$(BIN)/python -m benchmarks

clean:
	rm -rf out sample-data .pytest_cache
