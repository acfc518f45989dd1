# Two commands for a fresh machine:
#   make demo   - run the example app on memory:// and show what a caller sees
#   make test   - lint, type-check and run the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint pytest bench docs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.demo-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[demo]"
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

demo: $(VENV)/.demo-installed
	$(BIN)/python -m examples.demo

test: lint pytest

lint: $(VENV)/.test-installed
	$(BIN)/ruff check ratemw tests examples benchmarks
	$(BIN)/ruff format --check ratemw tests examples benchmarks
	$(BIN)/lint-imports
	$(BIN)/mypy ratemw

pytest: $(VENV)/.test-installed
	$(BIN)/python -m pytest

bench: $(VENV)/.test-installed
	$(BIN)/python -m pip install -q -e ".[bench]"
	$(BIN)/python -m benchmarks.asgi_overhead
	$(BIN)/python -m benchmarks.wsgi_overhead
	$(BIN)/python -m benchmarks.redis_overhead

docs: $(VENV)/.test-installed
	$(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
