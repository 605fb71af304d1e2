# prunebench: `make run` and `make test` work on a fresh clone (they create .venv if missing).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch and torchvision versions that install from this machine's disk; any torch>=2.2 works
TORCH  ?= torch==2.14.1 torchvision==0.29.1
# pytest workers (pytest-xdist): each test file runs whole on one worker, every process on one
# torch thread (tests/conftest.py); `make test TEST_WORKERS=0` runs the suite in one process
TEST_WORKERS ?= 2

.PHONY: install run test test-quick bench lint docs clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip "setuptools>=70.1"
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[dev,timm,export,trackers,lm,lm-eval,docs,compress]"
	touch $@

run: install  # the default comparison: l1, l0, gradient, hessian, random on digits
	$(BIN)/prunebench -m +experiment=compare

# every test; the 15 slowest are listed at the end of the log (CI's too)
test: install
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=15

test-quick: install  # without the tests marked slow
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=15 -m "not slow"

bench: install
	$(BIN)/python scripts/bench_overhead.py
	$(BIN)/python scripts/bench_strategies.py

lint: install
	$(BIN)/ruff check .

docs: install  # the documentation site (mkdocs.yml, docs/) at http://127.0.0.1:8000
	$(BIN)/python -m mkdocs serve

clean:
	rm -rf build dist site *.egg-info .pytest_cache .ruff_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	find outputs -mindepth 1 ! -name .gitkeep -exec rm -rf {} +
