"""The peers' own virtual environments in ``.cache/peers/``, made on first use: PyTriton from
Debian's /usr/bin/python3.11 (whose libpython its Python backend links) and tensorflow-cpu for
``../shared/peers/keras_seed.py``."""

from __future__ import annotations

import subprocess
from pathlib import Path

from bench.results import ROOT

PEERS = ROOT.parent / "shared" / "peers"
VENVS = ROOT / ".cache" / "peers"
DEBIAN_PYTHON = "/usr/bin/python3.11"
# What each peer venv needs, and the module that proves it is installed.
VENV_PACKAGES = {
    "pytriton": (["nvidia-pytriton", "onnxruntime", "numpy"], "pytriton"),
    "keras": (["tensorflow-cpu==2.21.*", "numpy"], "tensorflow"),
}


def ensure_venv(name: str) -> Path:
    """The peer venv's python, made (and its packages installed) when missing."""
    packages, module = VENV_PACKAGES[name]
    venv = VENVS / name
    python = venv / "bin" / "python"
    check = [str(python), "-c", f"import {module}"]
    if python.exists() and subprocess.run(check, capture_output=True, timeout=300).returncode == 0:
        return python
    print(f"setting up {venv} ({' '.join(packages)}) ...", flush=True)
    subprocess.run([DEBIAN_PYTHON, "-m", "venv", str(venv)], check=True, timeout=300)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", *packages], check=True, timeout=1800
    )
    return python
