# xapi-py: make run | make stop | make test | make bench
PYTHON ?= python3
VENV   ?= .venv
ROOT   ?= ./dom0
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: run stop status test unit system soak bench venv clean

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/xapi-ctl --root $(ROOT) up

stop: $(STAMP)
	$(BIN)/xapi-ctl --root $(ROOT) down

status: $(STAMP)
	$(BIN)/xapi-ctl --root $(ROOT) status

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

system: $(STAMP)
	$(BIN)/python -m pytest -q tests/system

soak: $(STAMP)
	XAPI_SOAK_ROUNDS=20 $(BIN)/python -m pytest -q tests/system/test_db_durability.py -k kill

bench: $(STAMP)
	command -v redis-server >/dev/null && command -v rrdtool >/dev/null || \
		{ apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server rrdtool; }
	$(BIN)/python -m pip install --quiet redis
	$(BIN)/python bench/startup.py
	$(BIN)/python bench/db.py
	$(BIN)/python bench/rrd.py
	$(BIN)/python bench/api.py
	$(BIN)/python bench/mailer.py

clean:
	rm -rf $(VENV) *.egg-info
