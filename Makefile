# `make demo` and `make test` set up .venv on first use (one-time install), then run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: setup demo test clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

# An IsoFLOP sweep (3 budgets x 5 sizes) on the embedded Shakespeare corpus, then the fits.
demo: setup
	rm -rf runs/demo
	$(BIN)/isoflop sweep --sweep=experiments/sweeps/shakespeare_isoflop.py --workdir=runs/demo \
	  --workers=2
	$(BIN)/isoflop analyze --workdir=runs/demo --out=runs/demo/analysis
	@echo "figures and fit.json: runs/demo/analysis/"

# pytest exits 5 when it collects no tests: an empty suite must not pass as green.
test: setup
	@$(BIN)/python -m pytest -q -n 2 --dist loadgroup --durations=10; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests: the suite is missing"; fi; \
	  exit $$rc

clean:
	rm -rf $(VENV) runs .jax_cache build *.egg-info
