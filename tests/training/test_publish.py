"""Publishing is atomic: a whole version appears, or none does."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

import training.publish as publish_module
from service.core.card import CARD_FILE, MODEL_FILE, read_card, sha256_file
from service.core.errors import PublishError
from training.export import INPUTS, OUTPUTS
from training.publish import publish, versions


@pytest.fixture
def onnx_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"pretend graph bytes")
    return path


def _fields(path: Path) -> dict[str, Any]:
    return {
        "class_names": ["a", "b"],
        "inputs": INPUTS,
        "outputs": OUTPUTS,
        "sha256": sha256_file(path),
        "metrics": {"test_accuracy": 0.5},
    }


def test_versions_count_up_with_valid_cards(tmp_path: Path, onnx_file: Path) -> None:
    repo = tmp_path / "models"
    first = publish(repo, "net", onnx_file, _fields(onnx_file))
    second = publish(repo, "net", onnx_file, _fields(onnx_file))
    assert (first.name, second.name) == ("1", "2")
    card = read_card(second)
    assert (card.name, card.version, card.sha256) == ("net", 2, sha256_file(second / MODEL_FILE))
    assert sorted(p.name for p in (repo / "net").iterdir()) == ["1", "2"]
    assert second.stat().st_mode & 0o755 == 0o755  # readable by a server running as another user


@pytest.mark.parametrize("fail_at", ["rename", "card"])
def test_failure_mid_publish_leaves_no_version(
    tmp_path: Path, onnx_file: Path, monkeypatch: pytest.MonkeyPatch, fail_at: str
) -> None:
    repo = tmp_path / "models"
    publish(repo, "net", onnx_file, _fields(onnx_file))

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "rename", boom) if fail_at == "rename" else monkeypatch.setattr(
        publish_module, "_write_synced", boom
    )
    with pytest.raises(OSError, match="disk full"):
        publish(repo, "net", onnx_file, _fields(onnx_file))
    assert sorted(p.name for p in (repo / "net").iterdir()) == ["1"]


def test_changed_graph_is_refused(tmp_path: Path, onnx_file: Path) -> None:
    fields = _fields(onnx_file)
    onnx_file.write_bytes(b"something else")
    with pytest.raises(PublishError, match="changed on disk"):
        publish(tmp_path / "models", "net", onnx_file, fields)
    assert versions(tmp_path / "models" / "net") == []


def test_hidden_and_non_numeric_folders_are_not_versions(tmp_path: Path, onnx_file: Path) -> None:
    model_dir = tmp_path / "models" / "net"
    (model_dir / ".tmp-abc").mkdir(parents=True)
    (model_dir / "notes").mkdir()
    assert versions(model_dir) == []
    assert publish(tmp_path / "models", "net", onnx_file, _fields(onnx_file)).name == "1"


def test_card_written_is_plain_json(tmp_path: Path, onnx_file: Path) -> None:
    final = publish(tmp_path / "models", "net", onnx_file, _fields(onnx_file))
    data = json.loads((final / CARD_FILE).read_text())
    assert data["inputs"][0] == {"name": "images", "datatype": "UINT8", "shape": [-1, 32, 32, 3]}
    assert data["metrics"]["test_accuracy"] == 0.5
