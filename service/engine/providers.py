"""Execution providers: which of those a model asks for this onnxruntime has, why one that is
missing cannot run here (in words an operator can act on), and the CUDA libraries that pip puts
where the loader does not look."""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import onnxruntime as ort

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
# Execution providers that live in a shared library of their own, loaded when a session asks.
PROVIDER_LIBRARIES = {
    "CUDAExecutionProvider": "libonnxruntime_providers_cuda.so",
    "TensorrtExecutionProvider": "libonnxruntime_providers_tensorrt.so",
}
GPU_PROVIDERS = tuple(PROVIDER_LIBRARIES)  # the providers that run on a GPU


def resolve_providers(requested: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split the requested providers into (usable, missing); CPU is appended as the last resort."""
    available = set(ort.get_available_providers())
    usable = [p for p in dict.fromkeys(requested) if p in available]
    missing = [p for p in dict.fromkeys(requested) if p not in available]
    if CPU not in usable:
        usable.append(CPU)
    return usable, missing


@cache
def preload_provider_libraries() -> None:
    """Load the CUDA and cuDNN libraries that pip put under ``site-packages/nvidia`` (once).

    onnxruntime-gpu's CUDA provider links against them by name, and that folder is not on the
    loader's path: without this the provider fails to load and sessions quietly run on the CPU.
    """
    if not any(p in ort.get_available_providers() for p in PROVIDER_LIBRARIES):
        return  # the CPU build of onnxruntime: nothing to preload
    preload = getattr(ort, "preload_dlls", None)  # onnxruntime >= 1.21
    if preload is None:
        log.warning("this onnxruntime has no preload_dlls; CUDA libraries must be on the path")
        return
    try:
        preload(cuda=True, cudnn=True, msvc=False)
    except Exception as exc:  # it reports missing wheels on its own; never stop serving for it
        log.warning("onnxruntime.preload_dlls failed: %s", exc)


def provider_problem(provider: str) -> str:
    """Why ``provider`` cannot run here, in words an operator can act on (names the library)."""
    if provider not in ort.get_available_providers():
        return (
            f"{provider} is not in this onnxruntime build (the CPU wheel; install onnxruntime-gpu)"
        )
    library = PROVIDER_LIBRARIES.get(provider)
    if library is None:
        return f"onnxruntime could not create {provider} (see its log)"
    try:
        ctypes.CDLL(str(Path(ort.__file__).parent / "capi" / library))
    except OSError as exc:  # e.g. "libcublasLt.so.12: cannot open shared object file"
        return f"{provider} cannot load: {exc}"
    try:
        ctypes.CDLL("libcuda.so.1")  # the driver's library: the host's, never a wheel's
    except OSError as exc:
        return f"{provider} loads, but the NVIDIA driver is missing: {exc}"
    return f"{provider} loads but onnxruntime could not create it (no usable GPU?)"
