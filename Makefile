# FaceNext: the user's door. Every target runs inside .venv, created by `make setup` when missing.
# Variables: CONFIG (training recipe), RUN / RUNS (run folders), COMP (Kaggle slug), FILE, MSG, DATA.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
FACENEXT := $(BIN)/facenext

CONFIG ?= configs/f23_lean_convnext.yaml
RUN ?= runs/$(basename $(notdir $(CONFIG)))
RUNS ?= $(RUN)
COMP ?= 11-785-f23-hw2p2-classification
DATA ?= data
FILE ?= submissions/submission.csv
MSG ?= FaceNext $(notdir $(RUNS))

.PHONY: setup demo test lint download train predict ensemble verify submit clean-demo bench

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $@

demo: setup
	$(FACENEXT) demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/pytest -q

download: setup
	$(FACENEXT) download $(COMP) --out $(DATA)

train: setup
	$(FACENEXT) train $(CONFIG) --out $(RUN)

predict: setup
	for run in $(RUNS); do $(FACENEXT) predict $$run || exit $$?; done

ensemble: setup
	$(FACENEXT) ensemble $(RUNS) --out $(FILE)

verify: setup
	$(FACENEXT) verify $(RUN)

submit: setup
	$(FACENEXT) submit $(FILE) --competition $(COMP) --message "$(MSG)"

clean-demo:
	rm -rf data/sample runs/demo submissions/demo submissions/*.csv submissions/*.json

bench: setup
	$(BIN)/python scripts/bench.py --out benchmarks/results.md
