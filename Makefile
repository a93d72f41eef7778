# Parley: `make demo` and `make test` work on a fresh clone (Python >= 3.11 and redis-server).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Re-install when the project's dependencies change.
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

PEERS  := tests/peers/node_smsc

.PHONY: peers demo test lint fmt typecheck run clean help bench-rules bench bench-gateways bench-smpp bench-smpp-server loadtest screenshots

help:
	@echo "make demo       run a complete NPS conversation over the real path"
	@echo "make test       run the whole test suite (lint, types, pytest; installs the test peers)"
	@echo "make peers      install the test peers (node-smpp SMSC under tests/peers, npm ci)"
	@echo "make run        run the engine (HTTP API on 127.0.0.1:8080)"
	@echo "make lint       ruff check + ruff format --check + mypy + lint-imports (the layering)"
	@echo "make bench-rules  decisions per second of the flow engine alone"
	@echo "make bench      end-to-end benchmark: open-loop texts at rising rates, latency percentiles,"
	@echo "                bytes per held conversation; JSON + PNG under bench-results/ (BENCH_ARGS=...);"
	@echo "                BENCH_ARGS=--cluster: the same run on a private local 3-master Redis Cluster"
	@echo "                (redis_mode in the JSON; Redis memory, commands and CPU summed over the masters)"
	@echo "make bench-gateways  send pipeline: reply-lane latency idle vs behind a 100,000-message bulk backlog,"
	@echo "                the rate on the wire (BENCH_GATEWAYS_ARGS=...)"
	@echo "make bench-smpp  SMPP connector vs the simulated SMSC: submits/s per bind by binds x window,"
	@echo "                submit->resp latency, rate accuracy at a configured TPS (BENCH_SMPP_ARGS=...);"
	@echo "                BENCH_SMPP_ARGS=--e2e: the carriers' path end to end, deliver_sm from a simulated SMSC"
	@echo "                (its own process) -> parley run -> reply submit_sm at rising open-loop rates;"
	@echo "                make bench's percentiles, sustained rule, JSON keys and chart (bench-results/smpp-e2e-*)"
	@echo "make bench-smpp-server  ESMEs binding into Parley (parley run): submit_sm/s accepted per bind and"
	@echo "                in total with receipts on, p99 submit->submit_sm_resp (BENCH_SMPP_SERVER_ARGS=...)"
	@echo "make loadtest   locust, headless: customers holding NPS and appointment conversations (LOADTEST_ARGS=...)"
	@echo "make screenshots  a PNG of every console page under screenshots/ (demo data, headless chromium)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

demo: $(STAMP)
	$(BIN)/parley demo

run: $(STAMP)
	$(BIN)/parley run

# Peers the tests run Parley against (an SMSC built on node-smpp): npm ci from the lock file,
# once per lock file (quick when installed).
$(PEERS)/node_modules/.installed: $(PEERS)/package.json $(PEERS)/package-lock.json
	cd $(PEERS) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

peers: $(PEERS)/node_modules/.installed

test: $(STAMP) peers lint
	$(BIN)/python -m pytest

bench-rules: $(STAMP)
	$(BIN)/python loadtests/bench_rules.py --flow nps
	$(BIN)/python loadtests/bench_rules.py --flow appointment

bench: $(STAMP)
	$(BIN)/python loadtests/bench.py $(BENCH_ARGS)

bench-gateways: $(STAMP)
	$(BIN)/python loadtests/bench_gateways.py $(BENCH_GATEWAYS_ARGS)

bench-smpp: $(STAMP)
	$(BIN)/python loadtests/bench_smpp.py $(BENCH_SMPP_ARGS)

bench-smpp-server: $(STAMP)
	$(BIN)/python loadtests/bench_smpp_server.py $(BENCH_SMPP_SERVER_ARGS)

loadtest: $(STAMP)
	$(BIN)/python loadtests/loadtest.py $(LOADTEST_ARGS)

# Debian's chromium and chromium-driver (apt-get install chromium chromium-driver).
screenshots: $(STAMP)
	$(BIN)/python -m tests.screenshots $(SCREENSHOTS_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check engine gateways tests loadtests
	$(BIN)/ruff format --check engine gateways tests loadtests
	$(BIN)/mypy
	$(BIN)/lint-imports

fmt: $(STAMP)
	$(BIN)/ruff check --fix engine gateways tests loadtests
	$(BIN)/ruff format engine gateways tests loadtests

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache *.egg-info
