# Two commands on a fresh machine: `make run` (the pipeline on its embedded defaults) and
# `make test` (lint, types and every test on the real broker). Each installs what it needs.
VENV    ?= .venv
PY      := $(VENV)/bin/python
NB      := $(VENV)/bin/nbstream
CONFIG  ?= examples/nbstream.yaml
STAMP   := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: help install system-deps kafka run test lint bench clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

system-deps:  ## JDK and Maven for the embedded Kafka broker (apt-get, only when missing)
	@scripts/ensure-system-deps.sh

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

install: system-deps $(STAMP)  ## virtualenv with nbstream and its dependencies

kafka: install  ## fetch Apache Kafka (KRaft) and its dependencies from Maven Central
	$(NB) kafka install

run: kafka  ## run the whole pipeline (embedded broker, ingest, processor, sinks) in the foreground
	@mkdir -p var/demo
	$(NB) --config $(CONFIG) up

lint: install  ## ruff and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: kafka lint  ## lint, types, and every test (unit, real broker, end to end)
	$(VENV)/bin/pytest

bench: kafka  ## every benchmark on the embedded broker: benchmarks/results.json, docs/performance.md
	$(PY) -m benchmarks.run

clean:  ## remove local state (broker data, demo output); keeps the venv and the Kafka cache
	rm -rf var
