# Every target sets up .venv itself, so each works on a fresh clone.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
DATA    := data/cifar10-jpeg
TARBALL := ../shared/data/cifar10-jpeg.tar.gz
HOST    ?= 127.0.0.1
PORT    ?= 8000

# `make` alone lists the targets (it used to make .venv only, the first rule below; every target
# makes .venv itself, and CI and the docs always name a target).
.DEFAULT_GOAL := help
help: ## list the targets, one line each (the default goal)
	@awk 'BEGIN {FS = ":.*## "} /^[a-z0-9-]+:.*## / {printf "  %-17s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: help serve test lint browser nginx prometheus postgres container-engine train train-best train-94 ablate-94 train-ddp bench bench-peers soak \
	fuzz data clean lock image-check compose-env test-fast

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Serving needs no torch; the stamp is redone whenever pyproject.toml changes. onnxruntime comes
# from the `cpu` extra, or with GPU=1 from the `gpu` extra: the pinned onnxruntime-gpu (CUDA 12)
# and its CUDA/cuDNN wheels in place of onnxruntime (`make serve GPU=1` on an NVIDIA machine).
GPU ?=
ORT_EXTRA := $(if $(GPU),gpu,cpu)
ORT_OTHER := $(if $(GPU),onnxruntime,onnxruntime-gpu)
$(VENV)/.serve-stamp-$(ORT_EXTRA): pyproject.toml | $(BIN)/python
	$(BIN)/pip uninstall --quiet --yes $(ORT_OTHER) 2>/dev/null || true
	$(BIN)/pip install --quiet -e '.[$(ORT_EXTRA)]'
	$(BIN)/pip check
	rm -f $(VENV)/.serve-stamp-*
	touch $@

$(VENV)/.dev-stamp: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[cpu,train,dev]'
	touch $@ $(VENV)/.serve-stamp-cpu

# With GPU=1 the service asks for CUDA and refuses to serve on the CPU (unless REQUIRE_PROVIDERS=false),
# in one process (WORKERS=auto counts CPU cores; each worker would hold its own CUDA context).
GPU_ENV := PROVIDERS=$${PROVIDERS:-CUDAExecutionProvider,CPUExecutionProvider} \
	REQUIRE_PROVIDERS=$${REQUIRE_PROVIDERS:-true} WORKERS=$${WORKERS:-1}
# The repository API takes a bearer token (docs/reliability.md): made once into the git-ignored
# .admin-token (mode 600) and served through ADMIN_TOKEN_FILE, unless ADMIN_TOKEN or
# ADMIN_TOKEN_FILE is set already.
ADMIN_TOKEN_PATH := .admin-token
OWN_TOKEN := $(ADMIN_TOKEN)$(ADMIN_TOKEN_FILE)
$(ADMIN_TOKEN_PATH):
	@umask 077 && $(PY) -c 'import secrets; print(secrets.token_urlsafe(32))' > $@.tmp && mv $@.tmp $@
serve: $(VENV)/.serve-stamp-$(ORT_EXTRA) $(if $(OWN_TOKEN),,$(ADMIN_TOKEN_PATH)) ## serve models/ on http://127.0.0.1:8000, gRPC :8001 (HOST, PORT; GPU=1: CUDA)
	$(if $(OWN_TOKEN),,@echo 'repository API token in $(CURDIR)/$(ADMIN_TOKEN_PATH):' \
	  'curl -H "Authorization: Bearer $$(cat $(ADMIN_TOKEN_PATH))" -X POST localhost:$(PORT)/v2/repository/index')
	$(if $(GPU),$(GPU_ENV)) $(if $(OWN_TOKEN),,ADMIN_TOKEN_FILE=$(ADMIN_TOKEN_PATH)) \
	  $(BIN)/python -m service --host $(HOST) --port $(PORT)

# The images' pinned dependencies (requirements/*.txt), generated from pyproject.toml by pip-tools.
# Run after changing dependencies in pyproject.toml; PIP_CONFIG_FILE=/dev/null keeps this machine's
# pip settings out. Where PyTorch's CPU index is unreachable, LOCK_FLAGS="--find-links DIR" names
# a folder holding the same torch==X+cpu wheel (here: make lock TORCH_INDEX_URL= LOCK_FLAGS="--find-links
# /opt/wheels").
TORCH_INDEX_URL ?= https://download.pytorch.org/whl/cpu
LOCK_FLAGS ?=
PIP_COMPILE = PIP_CONFIG_FILE=/dev/null CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/pip-compile \
	--quiet --strip-extras --allow-unsafe --build-deps-for wheel --no-emit-index-url \
	--no-emit-find-links $(LOCK_FLAGS)
$(VENV)/.containers-stamp: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[containers]'
	touch $@

lock: $(VENV)/.containers-stamp ## regenerate requirements/*.txt, the images' pins (pip-tools)
	mkdir -p requirements
	$(PIP_COMPILE) --extra cpu -o requirements/api.txt pyproject.toml
	$(PIP_COMPILE) --extra gpu -o requirements/api-gpu.txt pyproject.toml
	$(PIP_COMPILE) --extra cpu --extra train $(if $(TORCH_INDEX_URL),--extra-index-url $(TORCH_INDEX_URL)) \
	  -o requirements/trainer.txt pyproject.toml

# The trainer container runs as you (docker-compose.yml reads CIFAR_UID/CIFAR_GID from .env): this
# writes your ids there, keeping any other lines.
compose-env: ## write your uid and gid into .env for compose's trainer container
	@touch .env
	@grep -v -E '^CIFAR_(UID|GID)=' .env > .env.new || true
	@printf 'CIFAR_UID=%s\nCIFAR_GID=%s\n' "$$(id -u)" "$$(id -g)" >> .env.new
	@mv .env.new .env
	@echo ".env: CIFAR_UID=$$(id -u) CIFAR_GID=$$(id -g)"

# Build the images with docker (or podman) and run them as a user would: the container suite in
# tests/system (the tests marked `containers`, run alone by pytest's --image-check): minutes and a
# container engine, so not part of `make test`. Run it whenever the Dockerfile, the compose files
# or deploy/nginx change. IMAGE_CHECK_FLAGS adds the suite's pytest options: --no-gpu,
# --no-trainer, --no-compose (leave those out), --pull (try Docker Hub for the base images),
# --images N (real images to classify, 20), --max-burst-s S (15), --gpu-min-free-gb G (20), or
# any pytest option, e.g. IMAGE_CHECK_FLAGS="--no-gpu -x".
IMAGE_CHECK_FLAGS ?=
image-check: $(VENV)/.dev-stamp $(VENV)/.containers-stamp $(DATA) container-engine ## build and run the images as a user would (docker or podman; installs podman where none answers; minutes)
	$(BIN)/python -m pytest tests/system --image-check -v $(IMAGE_CHECK_FLAGS)

lint: $(VENV)/.dev-stamp ## ruff, mypy and the import-linter layering contracts
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict service
	$(BIN)/mypy training tests bench
	$(BIN)/lint-imports  # the layering contracts in pyproject.toml ([tool.importlinter])

# Debian's podman and runc when no container engine answers here (the docker CLI may be there
# without a daemon), and debootstrap when neither it nor mmdebstrap is (the container suite makes
# its stand-in base images with it where Docker Hub's are absent), where this machine lets us
# install them, as `browser` and `nginx` do for their tests.
ENGINE_ANSWERS := docker info >/dev/null 2>&1 || podman info >/dev/null 2>&1
ROOTFS_MAKER := command -v mmdebstrap >/dev/null 2>&1 || command -v debootstrap >/dev/null 2>&1
container-engine: ## install Debian's podman, runc and debootstrap where no engine answers (root)
	@missing="$$( { $(ENGINE_ANSWERS); } || echo podman runc) $$( { $(ROOTFS_MAKER); } || echo debootstrap)"; \
	if [ -z "$$(echo $$missing)" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing Debian's $$(echo $$missing) for make image-check"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	else echo "missing $$(echo $$missing) and not installable here: make image-check will say what it could not check"; fi

# Debian's chromium for the explorer page's browser test (Playwright drives it through
# executable_path; no browser is downloaded), where this machine lets us install it; elsewhere
# that test is skipped with a message.
browser: ## install Debian's chromium for the explorer page's browser test (as root)
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null); } || \
	  echo "chromium not installed: the browser test will be skipped"

# Debian's nginx for the load-balancer test (deploy/nginx/nginx.conf in front of two api processes),
# where this machine lets us install it; elsewhere that test is skipped with a message.
nginx: ## install Debian's nginx for the load-balancer test (as root)
	@command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx >/dev/null); } || \
	  echo "nginx not installed: the load-balancer test will be skipped"

# Debian's prometheus (it ships promtool) for the alert rules' tests (promtool check rules and test
# rules on deploy/prometheus), where this machine lets us install it; elsewhere they are skipped.
prometheus: ## install Debian's prometheus for promtool, which checks the alert rules (as root)
	@command -v promtool >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null); } || \
	  echo "promtool not installed: the alert rules' promtool tests will be skipped"

# Debian's PostgreSQL server for the prediction log's PostgreSQL tests (tests/support/postgres.py
# starts a throwaway server with initdb/pg_ctl as an unprivileged user), where this machine lets us
# install it; elsewhere those tests are skipped with a message.
PG_CTL := ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1
postgres: ## install Debian's postgresql server for the prediction log's PostgreSQL tests (as root)
	@$(PG_CTL) || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null); } || \
	  echo "postgresql not installed: the PostgreSQL prediction log tests will be skipped"

# Every test, the slow ones too (marked `slow`: over ~10 s each, real training under torchrun, the
# compose trainer, the CLI and retrain jobs, the short soak and fuzz of tests/system). test-fast
# skips those. Neither runs the container suite (marked `containers`: make image-check), so
# neither needs a container engine.
test: lint browser nginx prometheus postgres $(DATA) ## lint, then every test, the slow ones too (what CI runs; no containers)
	$(BIN)/python -m pytest -q

test-fast: lint browser nginx prometheus postgres $(DATA) ## lint, then the tests not marked slow
	$(BIN)/python -m pytest -q -m "not slow"

# CIFAR-10 (JPEG copy) extracted into the git-ignored data/ folder. Another DATA is the caller's:
# with internet, `make train-94 DATA=data/cifar10 RETRAIN_FLAGS=--download` fetches the official
# batches into it (MD5-checked) and trains on the original pixels.
$(DATA):
	@if [ "$(DATA)" = data/cifar10-jpeg ]; then mkdir -p data && tar -xzf $(TARBALL) -C data; \
	else echo "$(DATA) is not here: RETRAIN_FLAGS=--download fetches the official CIFAR-10 into it"; fi

data: $(DATA) ## extract the CIFAR-10 JPEG copy into data/

# The retrain job: train with the lecture's recipe (training/recipes.py names every recipe and
# its hyperparameters), publish the next version only if it passes the quality gate. RETRAIN_FLAGS
# adds flags, each overriding one field of the recipe or the gate, e.g. "--seed 1 --min-accuracy 0.685".
# The recipe has bf16 autocast: 2.4x the float32 step here, the same accuracy over three seeds
# (docs/training.md).
RETRAIN_FLAGS ?=
train: $(VENV)/.dev-stamp $(DATA) ## the retrain job: the lecture recipe, published only if it passes the quality gate
	$(BIN)/python -m training retrain --recipe lecture --data $(DATA) $(RETRAIN_FLAGS)

# The stronger CNN (issue 8): the cifar_bn recipe, 27-32 minutes on 2 cores; published as
# models/cifar10_cnn_bn/<next> only if test accuracy >= 0.90, then quantized to INT8
# (models/cifar10_cnn_bn_int8/<next>) if that keeps accuracy within 0.5 points.
train-best: $(VENV)/.dev-stamp $(DATA) ## train cifar_bn (published at >= 0.90), then its INT8 copy
	$(BIN)/python -m training retrain --recipe cifar_bn --name cifar10_cnn_bn --min-accuracy 0.90 \
	  --data $(DATA) $(RETRAIN_FLAGS)
	$(BIN)/python -m training quantize --data $(DATA) --model models/cifar10_cnn_bn \
	  --name cifar10_cnn_bn_int8

# airbench's methods (issue 18; Jordan 2024, arXiv 2404.00498) on its 64-256-256 network: the
# cifar_94 recipe. Published as models/cifar10_cnn_94/<next> only if test accuracy >= 0.93,
# then its INT8 copy.
train-94: $(VENV)/.dev-stamp $(DATA) ## train with airbench's methods (published at >= 0.93), then its INT8 copy
	$(BIN)/python -m training retrain --recipe cifar_94 --name cifar10_cnn_94 --min-accuracy 0.93 \
	  --data $(DATA) $(RETRAIN_FLAGS)
	$(BIN)/python -m training quantize --data $(DATA) --model models/cifar10_cnn_94 \
	  --name cifar10_cnn_94_int8

# The cifar_94 recipe with one method removed (training/recipes.py: ABLATIONS), trained into runs/
# and never published; its figures go to docs/results/ablate-94-<name>-seed<N>.json:
# make ablate-94 ABLATE=no-lookahead [RETRAIN_FLAGS="--seed 1"]
ABLATE ?= none
ablate-94: $(VENV)/.dev-stamp $(DATA) ## the train-94 run without one method (ABLATE=name), never published
	$(BIN)/python -m training ablate $(ABLATE) --data $(DATA) $(RETRAIN_FLAGS)

# Data-parallel training: NPROC processes on this machine (gloo on CPU, NCCL with --device cuda);
# --batch-size stays the global batch. No --recipe: the lecture's recipe in float32, as before.
NPROC ?= 2
train-ddp: $(VENV)/.dev-stamp $(DATA) ## make train's job data-parallel over NPROC processes (torchrun)
	$(BIN)/torchrun --standalone --nproc-per-node=$(NPROC) -m training retrain --data $(DATA) $(RETRAIN_FLAGS)

# Benchmarks, not tests: training throughput, the model table (accuracy, cost, onnxruntime speed of
# every model in models/), then the serving benchmark (real server + load). Each writes
# docs/results/<name>.json and re-renders the docs' figures from it (python -m bench --help).
bench: $(VENV)/.dev-stamp $(DATA) ## training throughput, the model table, then the serving benchmark
	$(BIN)/python -m bench train --data $(DATA)
	$(BIN)/python -m bench models
	$(BIN)/python -m bench serve --grpc

# Side by side in one run (issue 16): this service against PyTriton on the same model files and
# request bodies, the lecture recipe's training against its Keras original. Every serving figure
# twice (issue 28): shared (anywhere) and pinned (each server, all its processes and threads, on one
# core and the load generator on another, by taskset; the service then with 1 onnxruntime thread).
# The peers' venvs are made in .cache/peers/ on first use (PyTriton from Debian's
# /usr/bin/python3.11, tensorflow-cpu); BENCH_PEERS_FLAGS, e.g. "--seconds 15 --no-train" or
# "--modes pinned".
BENCH_PEERS_FLAGS ?=
bench-peers: $(VENV)/.dev-stamp $(DATA) ## this service beside PyTriton (shared and pinned cores), the lecture recipe beside Keras
	$(BIN)/python -m bench peers $(BENCH_PEERS_FLAGS)

# Reliability (docs/reliability.md): a real server under mixed load at concurrency 64 (5xx, dropped
# connections, memory growth), and schemathesis against its live OpenAPI document: the suites
# tests/system/test_soak.py and test_fuzz.py over models/ (`make test` runs them short, 20 s and 8
# examples, over the tests' repository). They print their result at the end. The soak also reads
# SOAK_WARMUP_S (40 % of the run, at most 30 s) and SOAK_CONCURRENCY (64); the fuzz FUZZ_SEED (6),
# FUZZ_WORKERS (1) and FUZZ_OUTPUT (a file for schemathesis' full reports and the server log).
SOAK_SECONDS  ?= 180
FUZZ_EXAMPLES ?= 100
soak: $(VENV)/.dev-stamp ## a real server under mixed load for SOAK_SECONDS at concurrency 64
	SOAK_SECONDS=$(SOAK_SECONDS) SOAK_MODEL_REPOSITORY=models \
	  $(BIN)/python -m pytest -q tests/system/test_soak.py

fuzz: $(VENV)/.dev-stamp ## schemathesis against a live server's OpenAPI document (FUZZ_EXAMPLES)
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) FUZZ_MODEL_REPOSITORY=models \
	  $(BIN)/python -m pytest -q tests/system/test_fuzz.py

clean: ## remove .venv, caches and runs/
	rm -rf $(VENV) .cache runs .pytest_cache .mypy_cache .ruff_cache
