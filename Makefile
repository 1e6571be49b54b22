# The two commands of the README:
#   make demo   set everything up, then run the live demo (Ctrl-C stops it)
#   make test   set everything up, then run the whole test suite
# Both are safe to re-run: each step is skipped when already done.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: setup demo test bench bench-deps system-deps clean

setup: system-deps $(STAMP) deploy/kafka/target/lib/.complete

# Java 17+ and Maven run the local Kafka broker; the base image has them, but a
# bare Debian does not, so install them from Debian's packages when missing.
system-deps:
	@command -v java >/dev/null && command -v mvn >/dev/null || { \
	  echo "installing Java and Maven from Debian packages ..."; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    openjdk-17-jre-headless maven >/dev/null; }
	@# Debian's prometheus package: promtool unit-tests the SLA rules, and the server
	@# evaluates every dashboard and rule expression in the tests.
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || { \
	  echo "installing Prometheus from Debian packages ..."; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null; }
	@# Debian's headless Chromium runs the wallboard's browser test.
	@command -v chromium >/dev/null || { \
	  echo "installing Chromium from Debian packages ..."; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

deploy/kafka/target/lib/.complete: deploy/kafka/pom.xml $(STAMP)
	$(BIN)/python -c "from ccpulse.commands.local_kafka import ensure_jars; print('Kafka jars in', ensure_jars())"
	@touch $@

demo: setup
	$(BIN)/ccpulse demo

test: setup
	$(BIN)/pytest -q -n 2 --dist loadfile --durations=25

bench: setup  # ARGS=--short for the quick run; see bench/README.md
	$(BIN)/ccpulse bench $(ARGS)

clean:
	rm -rf $(VENV) .ccpulse deploy/kafka/target
