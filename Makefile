# Every target sets up .venv itself, so each works on a fresh clone.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
DATA    := data/cifar10-jpeg
TARBALL := ../shared/data/cifar10-jpeg.tar.gz
HOST    ?= 127.0.0.1
PORT    ?= 8000

.PHONY: serve test lint train bench data clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Serving needs no torch; the stamp is redone whenever pyproject.toml changes.
$(VENV)/.serve-stamp: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.dev-stamp: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[train,dev]'
	touch $@ $(VENV)/.serve-stamp

serve: $(VENV)/.serve-stamp
	$(BIN)/python -m service --host $(HOST) --port $(PORT)

lint: $(VENV)/.dev-stamp
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict service
	$(BIN)/mypy training tests

test: lint
	$(BIN)/python -m pytest -q -m "not slow"

# CIFAR-10 (JPEG copy) extracted into the git-ignored data/ folder.
$(DATA):
	mkdir -p data
	tar -xzf $(TARBALL) -C data

data: $(DATA)

train: $(VENV)/.dev-stamp $(DATA)
	$(BIN)/python -m training train --data $(DATA)

bench: $(VENV)/.dev-stamp $(DATA)
	$(BIN)/python scripts/bench_train.py --data $(DATA)

clean:
	rm -rf $(VENV) .cache runs .pytest_cache .mypy_cache .ruff_cache
