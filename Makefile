# The README's two commands. Both work on a fresh machine with only python3.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test dev fuzz lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Installs exactly what was tested (constraints.txt), again whenever the dependencies change.
$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/orders-etl sync

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The UI and the daemon on a local instance; runs and schedules persist in .dagster_home.
dev: $(STAMP)
	mkdir -p .dagster_home && touch .dagster_home/dagster.yaml
	DAGSTER_HOME=$(CURDIR)/.dagster_home $(BIN)/dagster dev -w workspace.yaml

# Hostile input at a long budget (make test runs the same properties with ~100 cases each).
FUZZ_EXAMPLES ?= 2000
fuzz: $(STAMP)
	ORDERS_ETL_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest -q --hypothesis-show-statistics \
		orders_etl_tests/test_hostile_shopify.py orders_etl_tests/test_hostile_business_central.py \
		orders_etl_tests/test_hostile_erp_files.py

lint: $(STAMP)
	$(BIN)/ruff check orders_etl orders_etl_tests bench
	$(BIN)/ruff format --check orders_etl orders_etl_tests bench

clean:
	rm -rf $(VENV) data/orders.db data/orders.db-wal data/orders.db-shm .dagster_home
