# Two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TSTAMP := $(VENV)/.installed-test

.PHONY: demo test up lint bench openapi sandbox rsyslog clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(TSTAMP): pyproject.toml $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

# The local executor runs workloads inside bubblewrap; install it when we can.
sandbox:
	@command -v bwrap >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing bubblewrap (the local executor's sandbox)"; \
	    (apt-get update -qq && apt-get install -y -qq bubblewrap) >/dev/null; \
	  elif [ "$$ANIMUS_ALLOW_UNSANDBOXED" != "true" ]; then \
	    echo "bubblewrap is missing: install it (e.g. sudo apt-get install bubblewrap)"; \
	    echo "or set ANIMUS_ALLOW_UNSANDBOXED=true to run workloads unsandboxed (dev only)"; \
	    exit 1; \
	  fi; }

# The syslog tests forward to a real rsyslogd (TLS through rsyslog-gnutls);
# without it and outside CI they are skipped.
rsyslog:
	@if [ ! -x /usr/sbin/rsyslogd ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing rsyslog (the syslog forwarding tests' collector)"; \
	  (apt-get update -qq && apt-get install -y -qq rsyslog rsyslog-gnutls) >/dev/null; \
	fi

demo: $(STAMP) sandbox
	$(BIN)/animus demo

up: $(STAMP) sandbox
	$(BIN)/animus up

test: $(TSTAMP) sandbox rsyslog
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

# One session per file: each gets fresh services, so the HTTP figure is not
# taken while PostgreSQL still vacuums the million events of the other.
bench: $(TSTAMP)
	@for file in tests/bench/test_*.py; do \
	  $(BIN)/python -m pytest -q -s $$file -p no:cacheprovider --override-ini addopts= \
	    || exit 1; \
	done

openapi: $(STAMP)
	$(BIN)/python -m gateway.openapi

clean:
	rm -rf .animus
