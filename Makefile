# qpagent: the README's two commands are `make demo` and `make test`.
PY      := .venv/bin/python
PYTEST  := .venv/bin/pytest

.PHONY: deps demo test test-unit bench bench-lab experiment experiment-quick experiment-three-dc lint clean dashboards

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
	$(PY) -m qplab.experiments --quick --out results/quick --report lab/report/quick

## Ring AllReduce over the three-DC lab (unequal WAN links), kernel hashing beside qpagent.
experiment-three-dc: deps
	$(PY) -m qplab.experiments --quick --topology three-dc --delay-ms -1 --out results/three-dc --report lab/report/three-dc

## The whole sweep (under an hour on 2 cores; resumes where it stopped): lab/report/.
experiment: deps
	$(PY) -m qplab.experiments --full --prometheus --out results/full --report lab/report

## Rebuild dashboards/qpagent.json from qpagent.dashboard (never edit the JSON by hand).
dashboards: deps
	$(PY) -m qpagent.dashboard dashboards/qpagent.json

lint: deps
	$(PY) -m pyflakes agent lab tests

clean:
	-$(PY) -m qplab.cli down 2>/dev/null
	rm -rf results .pytest_cache
