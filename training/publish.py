"""Publish a model version into the repository atomically: a hidden temporary folder, then rename.

The service only reads integer-named folders, so it never sees a half-written version, and a run
killed at any moment leaves at most a ``.tmp-*`` folder that the next publish removes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from service.core.card import CARD_FILE, MODEL_FILE, ModelCard, sha256_file
from service.core.errors import PublishError

STALE_TMP_S = 3600.0  # a temporary folder this old belongs to a killed run


def versions(model_dir: Path) -> list[int]:
    if not model_dir.is_dir():
        return []
    return sorted(
        int(p.name)
        for p in model_dir.iterdir()
        if p.is_dir() and p.name.isascii() and p.name.isdigit()  # as the server reads them
    )


def next_version(model_dir: Path) -> int:
    return max(versions(model_dir), default=0) + 1


def _remove_stale_tmp(model_dir: Path) -> None:
    for p in model_dir.glob(".tmp-*"):
        if time.time() - p.stat().st_mtime > STALE_TMP_S:
            shutil.rmtree(p, ignore_errors=True)


def publish(repository: Path, name: str, onnx_path: Path, fields: Mapping[str, Any]) -> Path:
    """Copy ``onnx_path`` and its card into ``<repository>/<name>/<next version>/``; return it."""
    if not name or "/" in name or name.startswith("."):
        raise PublishError(f"invalid model name {name!r}")
    model_dir = repository / name
    model_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(model_dir)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=model_dir))
    tmp.chmod(0o755)  # mkdtemp makes it private; a server running as another user must read it
    try:
        shutil.copyfile(onnx_path, tmp / MODEL_FILE)
        if sha256_file(tmp / MODEL_FILE) != fields["sha256"]:
            raise PublishError(f"{onnx_path}: changed on disk after export; nothing published")
        for extra in companion_files(onnx_path, fields):
            shutil.copyfile(extra, tmp / extra.name)
        for _ in range(100):  # another publisher may take a number between our look and rename
            version = next_version(model_dir)
            card = ModelCard.from_dict({**plain_fields(fields), "name": name, "version": version})
            _write_synced(tmp / CARD_FILE, card.to_json())
            final = model_dir / str(version)
            if final.exists():
                continue
            os.rename(tmp, final)
            _fsync_dir(model_dir)
            return final
        raise PublishError(f"{model_dir}: could not claim a free version number")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def companion_files(onnx_path: Path, fields: Mapping[str, Any]) -> list[Path]:
    """Files the card names that sit beside the graph (the reliability diagram), published with it;
    only a plain file name, so a card cannot reach outside the folder."""
    name = fields.get("calibration", {}).get("reliability_diagram")
    if not isinstance(name, str) or not name or Path(name).name != name or name.startswith("."):
        return []
    path = onnx_path.parent / name
    return [path] if path.is_file() else []


def plain_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """TensorSpec objects to dicts, so the card validates what will be written."""
    out = dict(fields)
    for key in ("inputs", "outputs"):
        out[key] = [t if isinstance(t, Mapping) else vars(t) for t in out[key]]
    return out


def _write_synced(path: Path, text: str) -> None:
    with path.open("w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
