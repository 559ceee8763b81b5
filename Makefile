# scrapsort: `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= configs/default.yaml
DATA ?= ../shared/datasets/trashnet
RUN_DIR ?= runs/default
DEMO_EPOCHS ?= 4
SCRAPSORT := $(BIN)/scrapsort

.DEFAULT_GOAL := help
.PHONY: help setup demo test train evaluate export check-data

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

setup: $(BIN)/activate ## virtualenv with the workstation + test packages (CPU torch is fine)
	$(BIN)/pip install -q -e '.[train,ort,test]'

check-data:
	@test -d "$(DATA)" || { echo "no dataset at $(DATA): pass DATA=/path/to/class-folders (TrashNet layout)"; exit 2; }

demo: setup check-data ## end to end on TrashNet: prepare, train (DEMO_EPOCHS), evaluate, export
	$(SCRAPSORT) prepare --config $(CONFIG) --data $(DATA) --run-dir $(RUN_DIR)
	$(SCRAPSORT) train --config $(CONFIG) --run-dir $(RUN_DIR) --epochs $(DEMO_EPOCHS)
	$(SCRAPSORT) evaluate --config $(CONFIG) --run-dir $(RUN_DIR)
	$(SCRAPSORT) export --config $(CONFIG) --run-dir $(RUN_DIR)
	$(SCRAPSORT) predict $(RUN_DIR)/model.onnx $(DATA)/glass/glass1.jpg $(DATA)/trash/trash1.jpg

test: setup ## the test suite (what CI runs)
	$(BIN)/python -m pytest -q

train: setup check-data ## full training run with the config's schedule, then evaluate + export
	$(SCRAPSORT) prepare --config $(CONFIG) --data $(DATA) --run-dir $(RUN_DIR)
	$(SCRAPSORT) train --config $(CONFIG) --run-dir $(RUN_DIR)
	$(SCRAPSORT) evaluate --config $(CONFIG) --run-dir $(RUN_DIR)
	$(SCRAPSORT) export --config $(CONFIG) --run-dir $(RUN_DIR)
