# scrapsort: `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= configs/default.yaml
LINE ?= configs/demo.yaml
DATA ?= ../shared/datasets/trashnet
RUN_DIR ?= runs/default
# The demo trains in its own folder, so it never overwrites a full training run.
DEMO_RUN_DIR ?= runs/demo
DEMO_EPOCHS ?= 4
# Training processes on this machine (torchrun, DistributedDataParallel); several machines: docs/training.md
NPROC ?= 1
FOLDS ?= 5
JOBS ?= 1
PRECISION ?= fp16
PREFIX ?= /opt/scrapsort
SCRAPSORT := $(BIN)/scrapsort
TRAIN := $(if $(filter 1,$(NPROC)),$(SCRAPSORT),$(BIN)/torchrun --standalone --nproc_per_node $(NPROC) -m edge.cli)
# On a Jetson (L4T) the edge runtime alone, beside JetPack's TensorRT/OpenCV; elsewhere the workstation set.
# (Commas inside $(if ...) split its arguments, hence the variables.)
JETSON_RELEASE ?= /etc/nv_tegra_release
JETSON := $(wildcard $(JETSON_RELEASE))
RUNTIME_EXTRAS := ort,plant
WORKSTATION_EXTRAS := train,ort,plant,test
EXTRAS := $(if $(JETSON),$(RUNTIME_EXTRAS),$(WORKSTATION_EXTRAS))

.DEFAULT_GOAL := help
.PHONY: help setup peers demo test train cv cv-table evaluate export calibrate compare engine bench bench-belt run install uninstall doctor check-data check-model

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(BIN)/activate:
	$(PYTHON) -m venv $(if $(JETSON),--system-site-packages,) $(VENV)
	$(BIN)/pip install -q --upgrade pip

setup: $(BIN)/activate ## virtualenv + packages for this machine (Jetson: runtime only; else workstation + tests)
	$(BIN)/pip install -q -e '.[$(EXTRAS)]'

check-data:
	@test -d "$(DATA)" || { echo "no dataset at $(DATA): pass DATA=/path/to/class-folders (TrashNet layout)"; exit 2; }

check-model:
	@test -f "$(RUN_DIR)/model.onnx" || { echo "no $(RUN_DIR)/model.onnx: run 'make train' first (or use the demo's model: RUN_DIR=$(DEMO_RUN_DIR))"; exit 2; }

demo: setup check-data ## end to end: prepare, train (DEMO_EPOCHS), evaluate, export, then sort on the simulated belt
	$(SCRAPSORT) prepare --config $(CONFIG) --data $(DATA) --run-dir $(DEMO_RUN_DIR)
	$(SCRAPSORT) train --config $(CONFIG) --run-dir $(DEMO_RUN_DIR) --epochs $(DEMO_EPOCHS)
	$(SCRAPSORT) evaluate --config $(CONFIG) --run-dir $(DEMO_RUN_DIR)
	$(SCRAPSORT) export --config $(CONFIG) --run-dir $(DEMO_RUN_DIR)
	$(SCRAPSORT) predict $(DEMO_RUN_DIR)/model.onnx $(DATA)/glass/glass1.jpg $(DATA)/trash/trash1.jpg
	$(SCRAPSORT) run --config $(LINE) --run-dir $(DEMO_RUN_DIR) --model $(DEMO_RUN_DIR)/model.onnx

peers: ## the real peers the tests start on loopback: mosquitto, Chromium, systemd-analyze (apt, as root)
	@tests/peers/ensure.sh

test: setup peers ## the whole test suite, peers included (what CI runs); only TensorRT/GPU tests may skip
	SCRAPSORT_REQUIRE_PEERS=1 $(BIN)/python -m pytest -q

train: setup check-data ## full training with the config's schedule (NPROC=2: two processes), then evaluate + export
	$(SCRAPSORT) prepare --config $(CONFIG) --data $(DATA) --run-dir $(RUN_DIR)
	$(TRAIN) train --config $(CONFIG) --run-dir $(RUN_DIR)
	$(SCRAPSORT) evaluate --config $(CONFIG) --run-dir $(RUN_DIR)
	$(SCRAPSORT) export --config $(CONFIG) --run-dir $(RUN_DIR)

cv: setup check-data ## k-fold cross-validation of CONFIG's recipe on the non-test images (FOLDS=5; JOBS=N: N folds at once)
	$(SCRAPSORT) prepare --config $(CONFIG) --data $(DATA) --run-dir $(RUN_DIR)
	$(SCRAPSORT) cv --config $(CONFIG) --run-dir $(RUN_DIR) --folds $(FOLDS) --jobs $(JOBS)

cv-table: setup ## every recipe cross-validated in RUN_DIR/cv side by side, best mean first
	$(SCRAPSORT) cv --config $(CONFIG) --run-dir $(RUN_DIR) --table

calibrate: setup check-model ## FP16 + INT8 (Q/DQ) ONNX, TensorRT cache, and the FP32/FP16/INT8 comparison
	$(SCRAPSORT) calibrate --config $(CONFIG) --run-dir $(RUN_DIR)
	$(SCRAPSORT) evaluate --config $(CONFIG) --run-dir $(RUN_DIR) --precisions

engine: ## TensorRT engine for this device: make engine PRECISION=fp16|int8 (needs TensorRT)
	@$(BIN)/python -c "import tensorrt" 2>/dev/null || { echo "TensorRT is not installed here. Build engines on the device that runs them (JetPack 5/6/7 ships TensorRT), then: make engine PRECISION=$(PRECISION)"; exit 2; }
	$(SCRAPSORT) build --config $(CONFIG) --run-dir $(RUN_DIR) --precision $(PRECISION)

bench: setup check-model ## latency (p50/p90/p99/max) + accuracy per backend x precision, daemon stages
	$(SCRAPSORT) bench --config $(LINE) --run-dir $(RUN_DIR)

bench-belt: setup check-model ## the line at three belt densities against the simulator's truth (configs/demo.yaml)
	$(SCRAPSORT) bench --belt --config configs/demo.yaml --run-dir $(RUN_DIR)

compare: setup ## is model B better than model A? make compare A=runs/line B=runs/candidate (McNemar, verdict)
	$(SCRAPSORT) compare $(A) $(B) --config $(CONFIG)

run: setup check-model ## the daemon on LINE (default: the simulated demo line)
	$(SCRAPSORT) run --config $(LINE) --run-dir $(RUN_DIR)

doctor: ## what this device has: JetPack, TensorRT, CUDA, power mode, cameras, GPIO
	$(SCRAPSORT) doctor

install: ## service user, /opt/scrapsort, /etc/scrapsort/line.yaml, /var/lib/scrapsort, systemd units (root)
	@test "$$(id -u)" = 0 || { echo "make install needs root: sudo make install"; exit 2; }
	@test -f "$(RUN_DIR)/model.onnx" || { echo "no trained model in $(RUN_DIR): make train (or copy a run dir) first"; exit 2; }
	getent group gpio >/dev/null || groupadd --system gpio
	id scrapsort >/dev/null 2>&1 || useradd --system --no-create-home --home-dir /var/lib/scrapsort --shell /usr/sbin/nologin --groups video,gpio scrapsort
	mkdir -p $(PREFIX) /etc/scrapsort /var/lib/scrapsort
	cp -r edge train calibration jetson configs pyproject.toml README.md $(PREFIX)/
	$(PYTHON) -m venv $(if $(JETSON),--system-site-packages,) $(PREFIX)/venv
	$(PREFIX)/venv/bin/pip install -q '$(PREFIX)[$(RUNTIME_EXTRAS)]'
	cp $(RUN_DIR)/model*.onnx $(RUN_DIR)/manifest.json /var/lib/scrapsort/ 2>/dev/null || true
	test -f /etc/scrapsort/line.yaml || install -m 0640 -g scrapsort configs/line.example.yaml /etc/scrapsort/line.yaml
	chown -R scrapsort:scrapsort /var/lib/scrapsort
	install -m 0644 systemd/scrapsort.service systemd/scrapsort-engine.service /etc/systemd/system/
	systemctl daemon-reload
	systemctl enable scrapsort.service
	@echo "installed: edit /etc/scrapsort/line.yaml (camera, belt, ejectors), then: systemctl start scrapsort"

uninstall: ## stop and remove the service and code (keeps /etc/scrapsort and /var/lib/scrapsort)
	@test "$$(id -u)" = 0 || { echo "make uninstall needs root: sudo make uninstall"; exit 2; }
	-systemctl disable --now scrapsort.service scrapsort-engine.service
	rm -f /etc/systemd/system/scrapsort.service /etc/systemd/system/scrapsort-engine.service
	systemctl daemon-reload
	rm -rf $(PREFIX)
	@echo "removed; configuration (/etc/scrapsort) and state (/var/lib/scrapsort) kept"
