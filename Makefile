# Shortcuts; bin/run and bin/test work without make.
SHELL := /bin/bash
.PHONY: run test lint format mutation bench-ingest bench-fanout bench-login-flood bench-approval bench-guards

run:
	./bin/run

test:
	./bin/test

lint:
	./bin/lint

format:
	. bin/_venv.sh requirements-dev.txt && ruff check --fix . && ruff format .

# Mutation testing of the money path (tools/mutate.py; README: "Mutation testing"); not part of .ci/run.
# Every module of [tool.mutate.modules] in pyproject.toml, or some: make mutation MODULES="shared/x.py ..."
# (JOBS=n mutants at once, 2 by default).
mutation:
	. bin/_venv.sh requirements-dev.txt && nice -n 19 python tools/mutate.py $(if $(JOBS),-j $(JOBS)) $(MODULES)

bench-ingest:
	. bin/_venv.sh requirements-dev.txt && PYTHONPATH=. python bench/ingest.py

bench-fanout:
	. bin/_venv.sh requirements-dev.txt && PYTHONPATH=. python bench/fanout.py --accounts 5000 --concurrency 6 --warm

bench-login-flood:
	. bin/_venv.sh requirements-dev.txt && PYTHONPATH=. python bench/login_flood.py

bench-approval:
	. bin/_venv.sh requirements-dev.txt && PYTHONPATH=. python bench/approval.py

bench-guards:
	. bin/_venv.sh requirements-dev.txt && PYTHONPATH=. python bench/guards.py
