# qpagent: the README's two commands are `make demo` and `make test`.
PY      := .venv/bin/python
PYTEST  := .venv/bin/pytest

.PHONY: deps demo test test-unit bench bench-lab experiment-quick lint clean

deps:
	bash agent/scripts/install-deps.sh

## Bring up the default two-DC lab with agents, run a RoCEv2 burst, show the balance.
demo: deps
	$(PY) -m qplab.demo

## Every test: unit, BPF (kernel test runs), live namespaces, the FRR lab.
test: deps
	$(PYTEST) -v -ra

test-unit: deps
	$(PYTEST) -v tests/unit

bench: deps
	$(PY) tests/bench/bench_bpf.py
	$(PY) tests/bench/bench_reaction.py
	$(PY) tests/bench/bench_engine.py

bench-lab: deps
	$(PY) tests/bench/bench_lab.py

experiment-quick: deps
	$(PY) -m qplab.experiments --quick --out results/quick

lint: deps
	$(PY) -m pyflakes agent lab tests

clean:
	-$(PY) -m qplab.cli down 2>/dev/null
	rm -rf results .pytest_cache
