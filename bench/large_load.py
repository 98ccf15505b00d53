"""A large model published while the server answers: ``python -m service`` (one worker) serves
the shipped lecture model from a repository of its own; a model of ``--mb`` MB (an image
classifier from its config.pbtxt and labels, so its card and layer table are read from the
graph) is copied in, and the repository's poll loads it. Reported: the slowest health check
meanwhile (a thread asks every 10 ms), the server's largest resident memory (its processes
together, sampled every 10 ms) and the seconds from the copy to the model's READY, for each of
``--rounds`` models (each a new version). ``--checkout`` serves another working tree (a
worktree of an older commit).

    python -m bench large-load [--mb 268] [--rounds 2] [--checkout DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from onnx import TensorProto, helper, numpy_helper

from bench.held_bodies import rss_mib
from bench.hostile_heads import HealthWatch
from bench.results import ROOT
from bench.server import running_service

CONFIG = """name: "big"
max_batch_size: 8
input [{ name: "images" data_type: TYPE_UINT8 format: FORMAT_NHWC dims: [32, 32, 3] }]
output [{ name: "probabilities" data_type: TYPE_FP32 dims: [10] label_filename: "labels.txt" }]
"""


def big_classifier(mb: float) -> bytes:
    """UINT8 images -> one dense layer of about ``mb`` MB of weights -> softmax over 10."""
    hidden = max(1, int(mb * 1e6 / 4 / 3072))
    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.standard_normal((3072, hidden), np.float32) * 0.01, "w1"),
        numpy_helper.from_array(rng.standard_normal((hidden, 10), np.float32) * 0.01, "w2"),
        numpy_helper.from_array(np.array([-1, 3072], np.int64), "flat"),
    ]
    nodes = [
        helper.make_node("Cast", ["images"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["x", "flat"], ["rows"]),
        helper.make_node("MatMul", ["rows", "w1"], ["h"]),
        helper.make_node("MatMul", ["h", "w2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "big",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, [None, 32, 32, 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 10])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    data: bytes = model.SerializeToString()
    return data


class MemoryWatch:
    """The server's resident memory every 10 ms from a thread; ``peak`` is the largest since
    reset."""

    def __init__(self, pgid: int) -> None:
        self.pgid, self.peak = pgid, 0.0
        self.stop = threading.Event()
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(psutil.Error):  # a process ended while it was read
                self.peak = max(self.peak, rss_mib(self.pgid))
            time.sleep(0.01)


def ready(port: int, version: int) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", f"/v2/models/big/versions/{version}/ready")
    return connection.getresponse().status == 200


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mb", type=float, default=268, help="the model's weights in MB")
    parser.add_argument("--rounds", type=int, default=2, help="versions published in turn")
    parser.add_argument("--checkout", type=Path, default=ROOT, help="the tree to serve")


def main(args: argparse.Namespace) -> None:
    data = big_classifier(args.mb)
    env = {"WORKERS": "1", "LOG_LEVEL": "error", "PROVIDERS": "CPUExecutionProvider"}
    print(f"{args.checkout}: a {len(data) / 1e6:,.0f} MB model published while serving")
    with tempfile.TemporaryDirectory() as folder:
        repository = Path(folder) / "models"
        shutil.copytree(ROOT / "models" / "cifar10_cnn", repository / "cifar10_cnn")
        env |= {"MODEL_REPOSITORY": str(repository), "POLL_INTERVAL_S": "0.5"}
        with running_service(
            env, Path(folder) / "server.log", grpc=False, checkout=args.checkout
        ) as service:
            health, memory = HealthWatch(service.port), MemoryWatch(service.pgid)
            for version in range(1, args.rounds + 1):
                time.sleep(1)
                base = rss_mib(service.pgid)
                health.worst, memory.peak = 0.0, 0.0
                staged = Path(folder) / "staged" / "big"
                (staged / str(version)).mkdir(parents=True)
                (staged / "config.pbtxt").write_text(CONFIG)
                (staged / "labels.txt").write_text("\n".join(f"class{i}" for i in range(10)))
                (staged / str(version) / "model.onnx").write_bytes(data)
                start = time.perf_counter()
                shutil.copytree(staged, repository / "big", dirs_exist_ok=True)
                while not ready(service.port, version):
                    time.sleep(0.05)
                took = time.perf_counter() - start
                print(f"version {version}: READY after {took:.1f} s, slowest health check "
                      f"{health.worst * 1e3:.0f} ms, resident memory {base:,.0f} MiB before, "
                      f"{memory.peak:,.0f} at most")  # fmt: skip
                shutil.rmtree(staged.parent)
            health.stop.set()
            memory.stop.set()
