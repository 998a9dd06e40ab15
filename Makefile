# batchrun — the two commands a new machine needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: install demo test typecheck check bench clean report-screenshot

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/.installed

## Start the bundled simulator, submit jobs/example.jsonl, run it with 3 keys, show status, export.
demo: install
	BIN=$(BIN) bash scripts/demo.sh

## The README's picture of a run report: the demo's report, in headless Chromium (apt-get install -y chromium).
report-screenshot: demo
	$(BIN)/python scripts/report_screenshot.py demo/report.html docs/report.png

## The whole test suite (unit, integration against a real simulator and real databases, CLI acceptance).
## (Compiled first: where PYTHONDONTWRITEBYTECODE is set, each of the suite's `batchrun` processes would
## compile batchrun's modules again, ≈ 0.1 s of CPU apiece.)
test: install
	$(BIN)/python -m compileall -q batchrun migrations >/dev/null
	$(BIN)/pytest -n 2 -q -p no:cacheprovider

typecheck: install
	$(BIN)/mypy

check: typecheck test

$(BIN)/.bench-installed: $(BIN)/.installed pyproject.toml
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $@

## The benchmark suite of issue 7 (under 10 minutes on 2 cores); rewrites docs/benchmarks.md.
## Some only: make bench BENCH_ARGS="dispatch latency --reps 5"
bench: $(BIN)/.bench-installed
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf demo .pytest_cache .mypy_cache
