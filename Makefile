# modelyard developer entry points. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Tests to run; e.g. `make test PYTEST_ARGS="-k operator -x"`.
PYTEST_ARGS ?=

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	@touch $@

.PHONY: venv
venv: $(VENV)/.installed ## Create or update .venv with the package and its test extras

.PHONY: lint
lint: venv ## ruff and mypy (strict)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

.PHONY: test
test: venv lint ## Lint, then unit and integration tests (starts the local cluster if needed)
	$(VENV)/bin/pytest $(PYTEST_ARGS)

.PHONY: unit
unit: venv ## Unit tests only (no cluster, no servers)
	$(VENV)/bin/pytest tests/unit $(PYTEST_ARGS)

.PHONY: tools
tools: ## Build (first time) the pinned cluster binaries into ~/.cache/modelyard/bin
	hack/build-tools.sh $(if $(NODE),node)

.PHONY: cluster-up
cluster-up: ## Start the local control plane; writes .cluster/kubeconfig
	hack/cluster.sh up

.PHONY: cluster-down
cluster-down: ## Stop the local cluster; no process of it is left
	hack/cluster.sh down

.PHONY: cluster-env
cluster-env: ## Print exports for: eval "$$(make -s cluster-env)"
	@hack/cluster.sh env
