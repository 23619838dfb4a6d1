# Two set-up-and-go targets: `make demo` and `make test`. Each creates and fills .venv when missing.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test pytest lint docs package format clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test,dev,examples,lightning,torchmetrics,transformers,docs]"
	touch $(STAMP)

# The coverage-at-budget demo in quick mode (~1 min on 2 cores): table on stdout, figure in
# examples/output/. Full size: $(PY) examples/coverage_at_budget_demo.py --seeds 5
demo: $(STAMP)
	$(PY) examples/coverage_at_budget_demo.py --quick

test: $(STAMP) lint pytest docs package

pytest: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(PY) -m ruff check src tests examples benchmarks docs/_ext
	$(PY) -m ruff format --check src tests examples benchmarks docs/_ext
	$(PY) -m mypy

# The documentation site (mkdocs-material + mkdocstrings), built with --strict: any warning fails.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

# sdist + wheel, the wheel installed in a clean venv, the user's page run against it (~30 s).
package: $(STAMP)
	PY=$(PY) bash tools/check_package.sh

format: $(STAMP)
	$(PY) -m ruff check --fix src tests examples benchmarks docs/_ext
	$(PY) -m ruff format src tests examples benchmarks docs/_ext

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache dist build
