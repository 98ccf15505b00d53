"""Helpers for the live-update tests: graphs that tell versions apart, publishing into a repository
the way training does (or a broken version, just as atomically), a running server."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from service.core.card import CARD_FILE, MODEL_FILE, sha256_file
from service.settings import Settings
from tests.support.models import card_for, tiny_graph
from tests.support.servers import running_server as e2e_running_server
from training.publish import publish

# Poll fast in tests; a switch is expected within a few intervals.
POLL_INTERVAL_S = 0.05


def favouring_graph(winner: int) -> onnx.ModelProto:
    """The tiny graph with a bias that makes class ``winner`` the top-1 answer for any image."""
    graph = tiny_graph()
    for i, initializer in enumerate(graph.graph.initializer):
        if initializer.name == "bias":
            bias = numpy_helper.to_array(initializer).copy()
            bias[winner] += 100.0
            graph.graph.initializer[i].CopyFrom(numpy_helper.from_array(bias, "bias"))
    return graph


def publish_graph(repo: Path, name: str, graph: onnx.ModelProto, workdir: Path) -> Path:
    """``training.publish.publish`` of ``graph`` as the next version; returns its folder."""
    workdir.mkdir(parents=True, exist_ok=True)
    onnx_path = Path(tempfile.mkstemp(suffix=".onnx", dir=workdir)[1])
    onnx.save(graph, str(onnx_path))
    fields = card_for(name, 1, onnx_path).to_dict()
    del fields["name"], fields["version"]  # publish numbers the version itself
    return publish(repo, name, onnx_path, fields)


def write_version_atomically(
    repo: Path, name: str, version: int, model_bytes: bytes, card_sha256: str | None = None
) -> Path:
    """A version folder written into a hidden temporary folder and renamed into place, with a
    card whose sha256 is ``card_sha256`` (default: that of ``model_bytes``)."""
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=repo / name))
    (tmp / MODEL_FILE).write_bytes(model_bytes)
    card = card_for(name, version, tmp / MODEL_FILE).to_dict()
    if card_sha256 is not None:
        card["sha256"] = card_sha256
    (tmp / CARD_FILE).write_text(json.dumps(card), encoding="utf-8")
    final = repo / name / str(version)
    os.rename(tmp, final)
    return final


def rewrite_in_place(folder: Path, graph: onnx.ModelProto) -> None:
    """Replace a version's files where they lie (as someone copying over them would)."""
    onnx.save(graph, str(folder / MODEL_FILE))
    card = json.loads((folder / CARD_FILE).read_text())
    card["sha256"] = sha256_file(folder / MODEL_FILE)
    (folder / CARD_FILE).write_text(json.dumps(card), encoding="utf-8")


def top1(probabilities: object) -> list[int]:
    return [int(i) for i in np.argmax(np.asarray(probabilities).reshape(-1, 10), axis=1)]


@contextmanager
def running_server(settings: Settings) -> Iterator[str]:
    """``host:port`` of a real uvicorn server on a free loopback port, running in a thread."""
    with e2e_running_server(settings, grpc=False) as running:
        yield running.address
