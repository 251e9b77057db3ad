# Two commands do all set-up on a fresh Debian machine with Python 3.11:
#   make run   -- venv, install (runtime dependencies and the report's matplotlib),
#                 start the daemon on the embedded default
#   make test  -- venv, install with the dev tools, mosquitto when missing (as root), the suite
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: venv install run test soak crash chaos cluster lint typecheck bench clean mosquitto

$(PY):
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON)"; exit 1; }
	$(PYTHON) -m venv $(VENV)

# runtime dependencies only (and matplotlib, for lillith report)
$(STAMP): $(PY) pyproject.toml
	$(PIP) install --upgrade pip >/dev/null
	# torch is pinned to the CPU build (served from the local wheel cache)
	$(PIP) install 'torch==2.13.0'
	$(PIP) install -e '.[report]'
	touch $(STAMP)

# the dev tools (ruff, mypy, pytest, hypothesis, river, ...) on top
$(DEV_STAMP): $(STAMP)
	$(PIP) install -e '.[dev]'
	touch $(DEV_STAMP)

venv install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/lillith run

mosquitto:
	@if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then \
	  if [ "$$(id -u)" = "0" ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto mosquitto-clients) >/dev/null; \
	  else echo "mosquitto missing and not root: MQTT integration tests will be skipped"; fi; \
	fi

test: $(DEV_STAMP) mosquitto
	$(PY) -m pytest

soak: $(DEV_STAMP) mosquitto
	$(PY) -m pytest -m slow

crash: $(DEV_STAMP)
	$(PY) -m pytest -m crash

# faults against a real mosquitto (broker restart, SIGKILL, a full tmpfs, a corrupted
# snapshot, poison frames); each scenario prints its figures (CHAOS {...} lines)
chaos: $(DEV_STAMP) mosquitto
	$(PY) -m pytest -m chaos -s -p no:cacheprovider tests/test_chaos.py

# agents as Ray actors on a local Ray (2 CPUs): 8 agents and 20,000 frames against one
# process, an actor SIGKILLed mid-stream, lillith run --cluster (tests/test_cluster.py)
cluster: $(DEV_STAMP) mosquitto
	$(PY) -m pytest -m cluster -p no:cacheprovider tests/test_cluster.py

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(VENV)/bin/lillith bench fabric
	$(VENV)/bin/lillith bench som
	$(VENV)/bin/lillith bench conv4d

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
