# Targets: api (slim serving image, no torch), api-gpu (onnxruntime-gpu), trainer (CPU torch).
#   docker build --target api -t cifar-serve-api .
#   docker build --target trainer -t cifar-serve-trainer .
# No `# syntax=` line: the builder's own Dockerfile frontend is used, so a build needs no image
# from Docker Hub beyond the base (and PYTHON_IMAGE replaces that, e.g. with a local stand-in).
#
# Dependencies come from the lock files in requirements/ (make lock) and are installed before any
# source is copied, so a source or README edit rebuilds only the last, small layer. The lock is
# COPYed, not bind-mounted: podman's builder keys a RUN's cache on its text, not on a bound file's
# contents, so a changed lock would otherwise reuse the stale layer (seen with podman 4.3).
#
# Builds that reach PyPI through a proxy with its own CA, or through another index, pass them as
# build secrets, which never enter an image layer (make image-check does this):
#   docker build --secret id=pip_ca,src=/etc/ssl/certs/ca-certificates.crt \
#                --secret id=pip_conf,src=build-pip.conf --target api .
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /app
RUN useradd --create-home --uid 10001 --user-group app

# --- serving: onnxruntime on the CPU, never torch -------------------------------------------
FROM base AS api
COPY requirements/api.txt deploy/docker/pip-install.sh /tmp/deps/
RUN --mount=type=secret,id=pip_ca --mount=type=secret,id=pip_conf \
    sh /tmp/deps/pip-install.sh --requirement /tmp/deps/api.txt
COPY pyproject.toml README.md ./
COPY service ./service
RUN pip install --no-deps --no-build-isolation . && rm -rf build *.egg-info
# The shipped model, so the image serves out of the box; compose mounts ./models over it.
COPY models /models
# HOST, PORT and GRPC_PORT are settings, so `docker run -e PORT=9000` is honoured (CMD has no flags).
# WORKERS=1: one process per container (scale with containers); auto would count the host's cores,
# not the container's CPU quota (docs/scaling.md#workers).
ENV MODEL_REPOSITORY=/models \
    HOST=0.0.0.0 \
    PORT=8000 \
    GRPC_PORT=8001 \
    WORKERS=1 \
    DATA_DIR=/var/lib/cifar-serve
# The prediction log's SQLite file (docs/monitoring.md); compose mounts a named volume here, which
# starts with this folder's owner, so the app user can write it.
RUN mkdir -p /var/lib/cifar-serve && chown app:app /var/lib/cifar-serve
USER app
EXPOSE 8000 8001
# Shell form: podman's Docker-compatible API splits exec-form healthcheck arguments on spaces.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD python -c "import os, sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:%s/v2/health/ready' % os.environ.get('PORT', '8000'), timeout=2).status != 200)"
CMD ["python", "-m", "service"]

# --- serving on an NVIDIA GPU: the CUDA 12 build of onnxruntime with its CUDA and cuDNN wheels --
# The service preloads those wheels' libraries (onnxruntime.preload_dlls) before the first
# session; only the driver's libcuda.so.1 comes from the host (NVIDIA Container Toolkit).
FROM api AS api-gpu
USER root
COPY requirements/api-gpu.txt /tmp/deps/
RUN --mount=type=secret,id=pip_ca --mount=type=secret,id=pip_conf \
    pip uninstall --yes onnxruntime \
    && sh /tmp/deps/pip-install.sh --requirement /tmp/deps/api-gpu.txt \
    && pip check
ENV PROVIDERS=CUDAExecutionProvider,CPUExecutionProvider
USER app

# --- training: CPU torch from PyTorch's CPU index only (PyPI's Linux torch is the CUDA one) ----
FROM base AS trainer
# The CPU index alone (--index-url, no fallback): if it does not answer the build fails instead
# of taking PyPI's CUDA torch. The lock pins the CPU build (torch==X+cpu), which PyPI lacks.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
COPY requirements/trainer.txt deploy/docker/pip-install.sh /tmp/deps/
RUN --mount=type=secret,id=pip_ca --mount=type=secret,id=pip_conf \
    sh /tmp/deps/pip-install.sh --no-deps --index-url "$TORCH_INDEX_URL" \
        "$(grep '^torch==' /tmp/deps/trainer.txt)" \
    && sh /tmp/deps/pip-install.sh --requirement /tmp/deps/trainer.txt \
    && python -c "import torch, sys; sys.exit(torch.version.cuda is not None)"
COPY pyproject.toml README.md ./
COPY service ./service
COPY training ./training
RUN pip install --no-deps --no-build-isolation . && rm -rf build *.egg-info
USER app
CMD ["python", "-m", "training", "retrain", "--data", "/data/cifar10-jpeg", "--repository", "/models", "--runs-dir", "/tmp/runs", "--cache-dir", "/tmp/cache", "--recipe", "lecture"]
