# Every target that runs code first makes sure the environment is there (idempotent).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
TRAIN_VENV := .venv-train

.PHONY: demo test stack stack-down bench models system-deps venv clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

system-deps:
	scripts/install_system_deps.sh

demo: $(STAMP)
	@start=$$(date +%s); \
	$(BIN)/oncostream run --out demo-out --metrics-port 0; rc=$$?; \
	echo "make demo: wall time $$(( $$(date +%s) - start )) s"; exit $$rc

test: $(STAMP) system-deps
	scripts/fetch_kafka.sh
	scripts/fetch_s3proxy.sh
	scripts/install_deploy_tools.sh
	$(BIN)/python -m pytest -q tests

stack: $(STAMP) system-deps
	scripts/fetch_kafka.sh
	scripts/fetch_s3proxy.sh
	$(BIN)/python -m oncostream.stack up

stack-down:
	test ! -x $(BIN)/python || $(BIN)/python -m oncostream.stack down

# QUICK=1: the quick variants only (seconds, no services), written under .cache/bench-quick/
bench: $(STAMP) system-deps
	scripts/fetch_kafka.sh
	$(BIN)/python -m perf.run_all $(if $(QUICK),--quick)

models:
	test -x $(TRAIN_VENV)/bin/python || $(PYTHON) -m venv $(TRAIN_VENV)
	$(TRAIN_VENV)/bin/pip install -q -e '.[train]'
	@start=$$(date +%s); \
	$(TRAIN_VENV)/bin/python -m training.train_all; rc=$$?; \
	echo "make models: wall time $$(( $$(date +%s) - start )) s"; exit $$rc

clean:
	rm -rf demo-out .stack .pytest_cache
