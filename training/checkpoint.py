"""The two files a run writes, with their keys in one place each: ``last.pt``, rewritten after
every epoch so that ``--resume`` carries on exactly where a run stopped (``ResumePoint``), and
``checkpoint.pt``, the finished run that export publishes (``TrainingRun``)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from training.config import TrainConfig
from training.evaluation import Evaluation
from training.model import Classifier, build_classifier

LAST_CHECKPOINT = "last.pt"  # rewritten after every epoch: what ``--resume`` takes
RUN_CHECKPOINT = "checkpoint.pt"  # the finished run: what ``export`` takes


@dataclass
class TrainingRun:
    """A run's result: the kept weights and their evidence. ``train_model`` fills the training
    half; ``run_training`` adds the test evaluation, the data set and where the files went."""

    config: TrainConfig
    model: Classifier
    history: list[dict[str, float]]
    best_epoch: int  # 1-based; its weights are the ones in ``model``
    seconds: float
    test: Evaluation | None = None
    dataset: dict[str, Any] = dataclasses.field(default_factory=dict)
    run_dir: Path | None = None


@dataclass
class ResumePoint:
    """Everything ``--resume`` needs to carry on after ``epoch`` as if the run had not stopped:
    weights, optimizer and schedule state, averages, random generators, history, the best epoch."""

    config: dict[str, Any]
    epoch: int
    model: dict[str, Any]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any] | None
    ema: dict[str, Any] | None
    lookahead: dict[str, Any] | None
    augment_rng: torch.Tensor | None
    generator: torch.Tensor
    torch_rng: torch.Tensor
    history: list[dict[str, float]]
    best_accuracy: float
    best_epoch: int
    best: dict[str, Any]
    world_size: int = 1

    def save(self, path: Path) -> None:
        """Atomically: a kill mid-save leaves the previous file, never half of a new one."""
        state = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".tmp-{path.name}")
        torch.save(state, tmp)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> ResumePoint:
        state = torch.load(path, map_location="cpu", weights_only=True)
        optional = {"scheduler", "ema", "lookahead", "augment_rng"}  # absent in older files
        return cls(
            **{
                f.name: state.get(f.name) if f.name in optional else state[f.name]
                for f in dataclasses.fields(cls)
                if f.name in state or f.name in optional
            }
        )

    @property
    def train_config(self) -> TrainConfig:
        return TrainConfig(**self.config)


def save_run(run: TrainingRun, path: Path) -> None:
    assert run.test is not None, "a run is saved once it has been tested"
    torch.save(
        {
            "config": run.config.to_dict(),
            "state_dict": run.model.state_dict(),
            "history": run.history,
            "best_epoch": run.best_epoch,
            "test": run.test.as_dict(),
            "dataset": run.dataset,
            "seconds": run.seconds,
        },
        path,
    )


def load_run(path: Path) -> TrainingRun:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    config = TrainConfig(**ckpt["config"])
    model = build_classifier(config)
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    t = ckpt["test"]
    test = Evaluation(
        t["loss"],
        t["accuracy"],
        t["per_class_accuracy"],
        t["confusion_matrix"],
        t.get("most_confident_mistakes", []),
    )
    return TrainingRun(
        config,
        model,
        ckpt["history"],
        ckpt["best_epoch"],
        ckpt["seconds"],
        test,
        ckpt["dataset"],
        path.parent,
    )


def weights_sha256(model: torch.nn.Module) -> str:
    """One hash over every tensor of the state dict, in key order: equal weights, equal hash."""
    digest = hashlib.sha256()
    for key, tensor in model.state_dict().items():
        digest.update(key.encode() + b"\0" + tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
