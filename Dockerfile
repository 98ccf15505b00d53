# syntax=docker/dockerfile:1
# Targets: api (slim serving image, no torch), api-gpu (onnxruntime-gpu), trainer (CPU torch).
#   docker build --target api -t cifar-serve-api .
#   docker build --target trainer -t cifar-serve-trainer .
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
RUN useradd --create-home --uid 10001 --user-group app
COPY pyproject.toml README.md ./
COPY service ./service

# --- serving: onnxruntime on the CPU, never torch -------------------------------------------
FROM base AS api
RUN pip install .
# The shipped model, so the image serves out of the box; compose mounts ./models over it.
COPY models /models
ENV MODEL_REPOSITORY=/models
USER app
EXPOSE 8000 8001
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=2).status != 200)"]
CMD ["python", "-m", "service", "--host", "0.0.0.0", "--port", "8000", "--grpc-port", "8001"]

# --- serving on an NVIDIA GPU: the CUDA build of onnxruntime with its CUDA and cuDNN wheels ---
FROM api AS api-gpu
USER root
RUN pip uninstall --yes onnxruntime && pip install "onnxruntime-gpu[cuda,cudnn]"
ENV PROVIDERS=CUDAExecutionProvider,CPUExecutionProvider
USER app

# --- training: CPU torch from PyTorch's CPU index (PyPI's default Linux wheel is the CUDA one) -
FROM base AS trainer
COPY training ./training
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu ".[train]"
USER app
CMD ["python", "-m", "training", "retrain", "--data", "/data/cifar10-jpeg", "--repository", "/models", "--runs-dir", "/tmp/runs", "--cache-dir", "/tmp/cache"]
