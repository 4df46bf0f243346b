# familyview: `make run` serves the demo; `make test` runs the whole suite on SQLite and PostgreSQL.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
DB_URL ?= sqlite:///$(CURDIR)/var/familyview.db
PORT ?= 8000
HOST ?= 127.0.0.1
WORKERS ?= 1

.PHONY: run test test-fast fuzz hapi serve migrate openapi bench clean

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "make: $(PYTHON) not found (Python 3.11 is required)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e .
	@touch $@

$(DEV_STAMP): $(STAMP) pyproject.toml
	PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 $(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

# The embedded default: a SQLite file, development auth (a local signing key beside the
# database; serve logs it loudly) and the demo families. `make run PORT=8081 WORKERS=2`.
run: $(STAMP)
	FAMILYVIEW_DATABASE_URL=$(DB_URL) $(BIN)/familyview migrate
	FAMILYVIEW_DATABASE_URL=$(DB_URL) $(BIN)/familyview serve --dev-auth --with-demo --host $(HOST) --port $(PORT) --workers $(WORKERS)

# The whole suite, with a throwaway PostgreSQL and a HAPI FHIR JPA server (tests/hapi/server,
# built by Maven the first time) for the HAPI suite, and Debian's Chromium (apt-get when missing,
# never a downloaded browser) with axe-core (npm ci) for the browser tests. Java 17 and Maven are required.
test: $(DEV_STAMP)
	FAMILYVIEW_REQUIRE_POSTGRES=1 FAMILYVIEW_REQUIRE_HAPI=1 scripts/with-postgres.sh scripts/with-hapi.sh scripts/with-browser.sh scripts/run-tests.sh $(BIN)/python

# The tests that need no database, PostgreSQL or HAPI (consent engine, code lists, the family
# plan, profiles, lint, types and import layers): about a minute.
test-fast: $(DEV_STAMP)
	FAMILYVIEW_TEST_MARK="not db" scripts/run-tests.sh $(BIN)/python

# schemathesis for longer than `make test` does (tests/api/test_api_fuzz.py): every phase, 100
# cases per operation and phase, on SQLite and PostgreSQL (tens of thousands of cases; an hour or more)
fuzz: $(DEV_STAMP)
	FAMILYVIEW_REQUIRE_POSTGRES=1 FAMILYVIEW_FUZZ_EXAMPLES=$${FAMILYVIEW_FUZZ_EXAMPLES:-100} \
	FAMILYVIEW_FUZZ_PHASES=$${FAMILYVIEW_FUZZ_PHASES:-examples,coverage,fuzzing,stateful} \
	scripts/with-postgres.sh $(BIN)/python -m pytest tests/api/test_api_fuzz.py -q -p no:cacheprovider

# Build the HAPI FHIR test server only (tests/hapi/server/target; Maven caches HAPI in ~/.m2).
hapi:
	scripts/with-hapi.sh --build-only

openapi: $(STAMP)
	$(BIN)/familyview openapi

bench: $(DEV_STAMP)
	scripts/with-postgres.sh $(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) var *.egg-info
