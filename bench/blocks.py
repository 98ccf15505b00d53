"""Which renderer draws each block name that a page may hold, and from which results record."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench import blocks_calibration as cal
from bench import blocks_peers as peers
from bench import blocks_reliability as rel
from bench import blocks_serving as s
from bench import blocks_shm
from bench import blocks_training as tr
from bench import blocks_tuning as t

Record = dict[str, Any]

# block name -> (the record it is drawn from, the renderer)
BLOCKS: dict[str, tuple[str, Callable[[Record], str]]] = {
    "serving": ("serving", s.serving),
    "serving-summary": ("serving", s.serving_summary),
    "models": ("models", s.models),
    "model-table": ("models", s.model_table),
    "training": ("training", s.training),
    "peers": ("peers", peers.peers),
    "peer-targets": ("peers", peers.peer_targets),
    "peer-training": ("peer-training", peers.peer_training),
    "decode": ("decode", t.decode),
    "shm": ("shm", blocks_shm.shm),
    "grpc-h2load": ("grpc-h2load", t.grpc_h2load),
    "train-variants": ("train-variants", t.train_variants),
    "train-loop": ("train-loop", t.train_loop),
    "replicas": ("replicas", t.replicas),
    "profile": ("profile", t.profile),
    "cifar-bn-runs": ("training-cifar-bn", tr.cifar_bn_runs),
    "train-94-runs": ("training-94", tr.runs_94),
    "train-94-ablations": ("training-94", tr.ablations_94),
    "train-94-data": ("training-94", tr.data_94),
    "ddp-epochs-32": ("ddp-epochs", tr.ddp_epochs_32),
    "ddp-epochs-256": ("ddp-epochs", tr.ddp_epochs_256),
    "request-cost": ("request-cost", rel.request_cost),
    "fast-path-cost": ("fast-path-cost", rel.fast_path_cost),
    "calibration": ("calibration", cal.calibration),
    "calibration-coverage": ("calibration", cal.coverage),
}


def section(record: Record) -> str:
    """The block a benchmark's own record renders as (what ``python -m bench ...`` prints)."""
    _, draw = BLOCKS[record["name"]]
    return draw(record)
