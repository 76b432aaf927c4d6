# modelyard developer entry points. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Tests to run; e.g. `make test PYTEST_ARGS="-k operator -x"`.
PYTEST_ARGS ?=
# pytest-xdist processes for the tiers before e2e (a file's tests stay in one process).
# Those tests mostly wait on their servers: two processes take about 60% of one's time on
# 2 cores. TEST_WORKERS=0 runs them in this process. Tests marked `alone` (a measurement
# that needs the machine to itself) run after them, in one. The e2e tier shares one node:
# serial.
TEST_WORKERS ?= 2
TIERS := tests/unit tests/integration tests/security

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

# Every dependency comes from a hash-locked file (locks/, `make lock` refreshes them); the
# package itself is installed editable on top, without touching the dependencies.
$(VENV)/.installed: pyproject.toml locks/bootstrap.txt locks/dev.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --require-hashes -r locks/bootstrap.txt
	$(VENV)/bin/uv pip install -q --python $(PY) --require-hashes -r locks/dev.txt
	$(VENV)/bin/uv pip install -q --python $(PY) --no-deps --no-build-isolation -e .
	@touch $@

.PHONY: venv
venv: $(VENV)/.installed ## Create or update .venv with the package and its test extras

.PHONY: lint security
lint: venv ## ruff, mypy (strict) and the import contracts (lint-imports)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

.PHONY: test
test: venv lint ## Lint, unit, integration and e2e tests (installs and starts what they need)
	hack/deps.sh
	hack/build-tools.sh
	$(VENV)/bin/pytest $(TIERS) -n $(TEST_WORKERS) --dist loadfile -m 'not alone' $(PYTEST_ARGS)
	$(VENV)/bin/pytest $(TIERS) -m alone $(PYTEST_ARGS)
	$(MAKE) e2e

security: venv ## The security tier: each attack of docs/security.md against real parts
	hack/deps.sh
	hack/build-tools.sh node
	$(VENV)/bin/pytest tests/security $(PYTEST_ARGS)
	CLUSTER=$(CLUSTER) hack/images.sh build
	CLUSTER=$(CLUSTER) $(VENV)/bin/pytest tests/e2e -m security $(PYTEST_ARGS)

# CLUSTER=kind runs the e2e tests on kind (needs a Docker engine), else the built-in node.
CLUSTER ?= local
.PHONY: e2e
e2e: venv ## End-to-end tests on a real node: images, helm install, pods serving
	$(if $(filter kind,$(CLUSTER)),,hack/build-tools.sh node)
	CLUSTER=$(CLUSTER) hack/images.sh build
	CLUSTER=$(CLUSTER) $(VENV)/bin/pytest tests/e2e $(if $(filter kind,$(CLUSTER)),-m "not node_only") $(PYTEST_ARGS)

# The chaos suite alone (it also runs last in `make e2e`, so in `make test`). Its waits
# are parameters: MODELYARD_CHAOS_OUTAGE, _SINK_OUTAGE, _APISERVER_OUTAGE, _SOAK, _RATE
# (docs/reliability.md); the CI defaults keep it short.
.PHONY: chaos
chaos: venv ## Faults under load on a real node; one line per case: sent, failed, rows logged, dropped
	CLUSTER=$(CLUSTER) hack/images.sh build
	CLUSTER=$(CLUSTER) $(VENV)/bin/pytest tests/e2e -m "chaos$(if $(filter kind,$(CLUSTER)), and not node_only)" $(PYTEST_ARGS)

.PHONY: release
release: ## Push the images and the chart to REGISTRY (e.g. make release REGISTRY=localhost:5000)
	@test -n "$(REGISTRY)" || { echo "usage: make release REGISTRY=host[:port][/path]"; exit 2; }
	hack/release.sh $(REGISTRY)

.PHONY: images
images: ## Build the images from the Dockerfiles and load them into the node
	CLUSTER=$(CLUSTER) hack/images.sh

.PHONY: demo
demo: ## The main job: cluster, images, helm install, train, deploy, predict
	hack/deps.sh
	CLUSTER=$(CLUSTER) hack/demo.sh

# One lock per runtime: the dev venv (everything) and one per image, each from its extra.
LOCKS := dev:test operator:operator server:server pipelines:pipelines
.PHONY: lock
lock: venv ## Re-resolve the hash-locked requirement files in locks/ (a deliberate update)
	$(VENV)/bin/uv pip compile -q --universal --python-version 3.11 --generate-hashes \
	  locks/bootstrap.in -o locks/bootstrap.txt
	@for pair in $(LOCKS); do \
	  name=$${pair%%:*}; extra=$${pair##*:}; \
	  $(VENV)/bin/uv pip compile -q --universal --python-version 3.11 --generate-hashes \
	    --extra $$extra pyproject.toml locks/build.in -o locks/$$name.txt || exit 1; \
	  echo "wrote locks/$$name.txt"; \
	done

.PHONY: unit
unit: venv ## Unit tests only (no cluster, no servers; builds kubectl and helm the first time)
	hack/build-tools.sh cli
	$(VENV)/bin/pytest tests/unit $(PYTEST_ARGS)

.PHONY: tools
tools: ## Build (first time) the pinned cluster binaries into ~/.cache/modelyard/bin
	hack/build-tools.sh $(if $(NODE),node)

.PHONY: cluster-up
cluster-up: ## Start the local control plane (NODE=1: with a node); .cluster/kubeconfig
	NODE=$(NODE) hack/cluster.sh up

.PHONY: cluster-down
cluster-down: ## Stop the local cluster; no process of it is left
	hack/cluster.sh down

.PHONY: cluster-env
cluster-env: ## Print exports for: eval "$$(make -s cluster-env)"
	@hack/cluster.sh env

# Where `make manifests` writes; the staleness test renders into a temporary directory.
MANIFESTS_BASE ?= manifests/base
.PHONY: manifests
manifests: ## Render manifests/base/ from charts/modelyard (for kubectl apply -k manifests/)
	@{ echo '# Generated by `make manifests` from charts/modelyard (helm template, release'; \
	  echo '# "modelyard", namespace "modelyard"). Do not edit: change the chart and re-run it.'; \
	  $(or $(wildcard $(HOME)/.cache/modelyard/bin/helm),helm) template modelyard charts/modelyard \
	    --namespace modelyard --skip-tests; } > $(MANIFESTS_BASE)/modelyard.yaml.tmp
	@mv $(MANIFESTS_BASE)/modelyard.yaml.tmp $(MANIFESTS_BASE)/modelyard.yaml
	@echo "wrote $(MANIFESTS_BASE)/modelyard.yaml"
