# omni-mev: `make serve` runs the service, `make test` runs the tests.
# Both create .venv and install what they need on a fresh machine.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
# Root installs system packages directly; anyone else through sudo.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# What the tests start, as command:package. Only the packages of missing commands are installed: a machine with
# another build of Node keeps it (Debian's npm package would conflict with it).
SYSTEM_COMMANDS := redis-server:redis-server nginx:nginx wrk:wrk openssl:openssl systemd-analyze:systemd curl:curl \
	node:nodejs npm:npm rustc:rustc prometheus:prometheus promtool:prometheus logrotate:logrotate
# torch first and pinned: 2.13.0 is the CPU build; a looser pin pulls a multi-GB CUDA build.
TORCH := torch==2.13.0

.PHONY: install serve test test-fast bench bench-ledger bench-capacity bench-devices loop shift train system-deps image image-check lock test-deploy clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip setuptools wheel

# The service with both optional parts: the PyTorch fallback and Redis.
$(VENV)/.base: setup.cfg setup.py | $(BIN)/python
	$(PIP) install --quiet $(TORCH)
	$(PIP) install --quiet -e '.[torch,redis]'
	touch $@

# The tests run the benchmark harness in smoke mode, so they need its packages too.
$(VENV)/.test: $(VENV)/.base
	$(PIP) install --quiet -e '.[train,test,bench]'
	touch $@

# The Node clients' package (ws), for the Node examples and the stream benchmark's load generator.
NODE_MODULES := examples/node/node_modules/.installed
$(NODE_MODULES): examples/node/package.json | system-deps
	cd examples/node && npm install --no-audit --no-fund --silent
	touch $@

## install: the virtual environment with the service's packages
install: $(VENV)/.base

## serve: run gunicorn with gunicorn.conf.py on the shipped model (no Redis needed)
serve: $(VENV)/.base
	$(BIN)/gunicorn -c gunicorn.conf.py wsgi:app

## system-deps: what the tests start (redis-server, nginx, PostgreSQL, Prometheus and promtool, wrk, node and
## rustc for the example clients), when missing. Debian's prometheus package starts a Prometheus on 9090,
## omni-mev's default metrics port: it is stopped and disabled (the tests start their own).
system-deps:
	@packages=""; \
	for pair in $(SYSTEM_COMMANDS); do \
		cmd=$${pair%%:*}; \
		command -v $$cmd >/dev/null 2>&1 || [ -x /usr/sbin/$$cmd ] || packages="$$packages $${pair#*:}"; \
	done; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || packages="$$packages postgresql"; \
	if [ -n "$$packages" ]; then \
		echo "installing system packages:$$packages"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$packages || exit 1; \
		if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then \
			$(SUDO) systemctl disable --now prometheus || true; \
		fi; \
	fi

## test: the whole test suite, as CI runs it: every tier (unit, service, system, model, bench smoke)
test: $(VENV)/.test system-deps $(NODE_MODULES)
	$(BIN)/python -m pytest

## test-fast: the unit tier (in-process: functions, files, the app through Flask's test client, ruff and mypy);
## installs no system package
test-fast: $(VENV)/.test
	$(BIN)/python -m pytest -m unit -q

## bench-capacity: what a fleet's shared parts take (~2 minutes): ledger rows and outcomes per second into one
## PostgreSQL, dispatch claims per second into one Redis (bench/results/capacity-<date>.json; docs/scaling.md)
bench-capacity: $(VENV)/.test system-deps
	$(BIN)/python -m bench.capacity

## image: the OCI image of deploy/Containerfile, tagged $(IMAGE), with podman, buildah or docker (the first one
## here that can build), its packages installed by hash from deploy/requirements.lock; where PYTHON_IMAGE cannot
## be pulled, on a base made from Debian's packages (deploy/base-image.sh, mmdebstrap). IMAGE_ARGS passes build
## arguments, e.g. IMAGE_ARGS="--build-arg EXTRAS=train --build-arg TORCH_INDEX_URL=..." for the retrainer's
## image; docs/kubernetes.md
IMAGE ?= omni-mev:latest
IMAGE_ARGS ?=
image:
	IMAGE=$(IMAGE) IMAGE_ARGS='$(IMAGE_ARGS)' sh deploy/build-image.sh

## lock: rewrite deploy/requirements.lock (the image's packages, with their hashes) from setup.cfg
lock: $(VENV)/.test
	$(BIN)/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url \
		--no-emit-find-links --extra redis --extra postgres --output-file deploy/requirements.lock \
		setup.cfg deploy/build-backend.in

## test-deploy: the rendered Kubernetes base run with podman kube play on the images make image builds (the
## service's, and the retrainer's with the train extra): pods ready, /predict, the stream over WebSocket and gRPC,
## the retrainer registering a challenger the serving pods load (tests/deploy_check.py; skipped, saying why, where
## podman cannot run)
test-deploy: $(VENV)/.test system-deps
	$(BIN)/python -m tests.deploy_check

## image-check: run the built image (read-only root, PORT) and check /v2/health/ready, /predict, its user and a
## clean exit on SIGTERM; RUN_ARGS passes flags to `run`
image-check:
	IMAGE=$(IMAGE) sh deploy/check-image.sh

## train: retrain the model and rewrite models/ and docs/reliability.png
train: $(VENV)/.test
	$(BIN)/omni-mev train --docs docs

## bench: the full benchmark against the FastAPI reference (~15 minutes), writing bench/results/<date>.json and
## docs/benchmarks.{md,png}; then the money path (~5 minutes): start-up and reload by history size, /predict's p99
## through a reload under load, a dispatch's claim in each claim mode (bench/results/money-path-<date>.json)
bench: $(VENV)/.test system-deps $(NODE_MODULES)
	$(BIN)/python -m bench.run
	$(BIN)/python -m bench.money_path

## bench-ledger: the outcome ledger under load (~15 minutes): its cost on /predict in three runs, /predict's
## p99 under outcomes and /quality polls, /quality's latency by ledger size, the ledger's size on disk
## (bench/results/ledger-<date>.json; figures in docs/benchmarks.md)
bench-ledger: $(VENV)/.test system-deps
	$(BIN)/python -m bench.ledger_load

## bench-devices: predictions/s by batch size on ONNX Runtime and PyTorch, CPU and CUDA where present, and
## training time per epoch per device (bench/results/devices-<date>.json; GPU figures in docs/benchmarks.md)
bench-devices: $(VENV)/.test
	$(BIN)/python -m bench.devices

## loop: the closed loop at scale: 20,000 simulated opportunities scored, their outcomes posted, /quality
## compared with the offline evaluation (figures in docs/operations.md)
loop: $(VENV)/.test
	$(BIN)/python -m bench.closed_loop --n 20000

## shift: the champion/challenger loop on a regime shift, at scale (figures and docs/regime_shift.png in
## docs/model.md; writes bench/results/regime-shift-<date>.json)
shift: $(VENV)/.test
	$(BIN)/python -m bench.regime_shift

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
