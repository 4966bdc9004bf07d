# Everything a fresh Debian 12 machine (as root) needs; each step is skipped once done.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SERVING_IMAGE ?= tfserving-deploy/serving:2.21.0
REGISTRY ?= 127.0.0.1:5000
BASE_IMAGE ?= tfserving-deploy/debian:bookworm

export AIRFLOW_HOME ?= $(CURDIR)/.airflow
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__PLUGINS_FOLDER := $(CURDIR)/plugins
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export TFSERVING_DEPLOY_CACHE ?= $(CURDIR)/.cache/tfserving-deploy

.PHONY: demo demo-kubernetes test lint venv services images base-image serving-image airflow-db clean bench stack-test cluster cluster-down

demo: venv services images airflow-db  ## fetch -> build -> push -> deploy 3 replicas -> validate, locally
	$(PY) scripts/demo.py --serving-base-image $(REGISTRY)/$(SERVING_IMAGE)

demo-kubernetes: venv services images airflow-db cluster  ## the tutorial's part 3 on the local cluster: 3 replicas behind a LoadBalancer
	$(PY) scripts/demo.py --target kubernetes --serving-base-image $(REGISTRY)/$(SERVING_IMAGE)

test: venv services images airflow-db cluster  ## the whole test suite, integration tests and the real cluster included
	$(PY) -m pytest -q tests

venv: $(VENV)/.installed
$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	@$(PYTHON) -m venv --help >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	@# The project's packages (include/, plugins/: pyproject.toml), editable: imported in place.
	$(PY) -m pip install -q --no-deps -e .
	touch $@

services:  ## dockerd + a registry on 127.0.0.1:5000 (installs Debian packages when missing)
	bash scripts/host-services.sh

images: base-image serving-image
base-image: services
	bash scripts/build-base-image.sh $(BASE_IMAGE)
serving-image: base-image
	BASE=$(BASE_IMAGE) bash scripts/build-serving-image.sh $(SERVING_IMAGE)
	@# The oci builder reads its base from a registry: publish the local serving image there.
	docker tag $(SERVING_IMAGE) $(REGISTRY)/$(SERVING_IMAGE)
	docker push -q $(REGISTRY)/$(SERVING_IMAGE) >/dev/null

airflow-db: $(AIRFLOW_HOME)/.migrated
$(AIRFLOW_HOME)/.migrated: $(VENV)/.installed
	mkdir -p $(AIRFLOW_HOME)
	$(VENV)/bin/airflow db migrate >/dev/null
	touch $@

cluster: venv services  ## a single-node Kubernetes v1.34 on this machine: .cluster/kubeconfig, .cluster/bin/kubectl
	bash cluster/up.sh

cluster-down:  ## stop the local cluster and remove its state (the built binaries stay cached)
	bash cluster/down.sh

lint: venv  ## ruff (lint + format check) and mypy on the library and the Airflow glue
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

clean:  ## remove the demo's replicas and local state (not the images)
	-docker ps -aq --filter label=io.tfserving-deploy.serving-model | xargs -r docker rm -f
	rm -rf $(AIRFLOW_HOME) .cache build

bench: venv services images airflow-db cluster  ## publish: docker commit/push vs the OCI builder; model-to-serving per task; warmup; gRPC spread through the cluster's balancer (about 15 min; the first run also makes the tutorial-size models, about 5 min more)
	$(PY) scripts/bench_publish.py
	$(PY) scripts/bench_serving.py --model both
	$(PY) scripts/bench_warmup.py --runs 7
	$(PY) scripts/bench_balance.py

stack-test: venv services images  ## the docker-compose stack: build, up, trigger the DAG over the REST API, down -v (about 3.5 min warm)
	bash scripts/stack-test.sh
