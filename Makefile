# Shortcuts; bin/run and bin/test work without make.
.PHONY: run test lint format bench-ingest

run:
	./bin/run

test:
	./bin/test

lint:
	. bin/_venv.sh requirements-dev.txt && ruff check . && ruff format --check . && mypy

format:
	. bin/_venv.sh requirements-dev.txt && ruff check --fix . && ruff format .

bench-ingest:
	. bin/_venv.sh requirements-dev.txt && PYTHONPATH=. python bench/ingest.py
