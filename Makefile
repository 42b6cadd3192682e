# Shortcuts; bin/run and bin/test work without make.
SHELL := /bin/bash
.PHONY: run test lint format bench-ingest bench-fanout bench-login-flood bench-approval bench-guards

run:
	./bin/run

test:
	./bin/test

lint:
	./bin/lint

format:
	. bin/_venv.sh requirements-dev.txt && ruff check --fix . && ruff format .

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
