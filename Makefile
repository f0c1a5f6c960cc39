# Set-up and entry points. `make demo` and `make test` each create/refresh .venv and install what they need.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch first, pinned exactly: the CPU wheel (a looser range could pull a multi-GB CUDA build)
TORCH  ?= torch==2.13.0

.PHONY: demo study test test-fast check format bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed-%: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[$*]"
	touch $@

demo: $(VENV)/.installed-demo  ## train GRPO on the embedded toy task with several divergences; prints a table
	$(BIN)/python examples/demo.py $(DEMO_ARGS)

study: $(VENV)/.installed-demo  ## the divergence study (pass@k at k up to 256, 3 seeds; resumable); STUDY_ARGS="--quick" for a smoke test
	$(BIN)/python -m benchmarks.study $(STUDY_ARGS)

test: $(VENV)/.installed-dev  ## lint + the whole test suite (what CI runs)
	$(BIN)/ruff check trl_divergences tests benchmarks examples
	$(BIN)/ruff format --check trl_divergences tests benchmarks examples
	$(BIN)/python -m pytest -q -ra $(PYTEST_ARGS)

test-fast: $(VENV)/.installed-dev  ## everything but the slow trainer runs
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

format: $(VENV)/.installed-dev
	$(BIN)/ruff format trl_divergences tests benchmarks examples
	$(BIN)/ruff check --fix trl_divergences tests benchmarks examples

bench: $(VENV)/.installed-dev  ## op and GRPO-step speed/memory benchmarks, side-by-side tables, then the README's Performance tables from the results
	$(BIN)/python benchmarks/bench_ops.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/bench_trainer.py $(BENCH_TRAINER_ARGS)
	$(BIN)/python benchmarks/report.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache demo_outputs
