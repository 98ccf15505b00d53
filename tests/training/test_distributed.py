"""Data-parallel training under torchrun (2 CPU processes, gloo on loopback) and resuming a run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from service.core.card import read_card
from tests.support.servers import free_port
from tests.support.training_inputs import class_images
from training.config import TrainConfig
from training.data import Split, train_val_split
from training.distributed import World, rank_share, world_from_env
from training.train import train_model

ROOT = Path(__file__).resolve().parents[2]


def _train(launcher: list[str], *args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [*launcher, "-m", "training", "train", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env=env,
    )


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = torch.load(
        run_dir / "checkpoint.pt", map_location="cpu", weights_only=True
    )["state_dict"]
    return state


@pytest.mark.slow
def test_two_processes_agree_publish_once_and_match_one_process(
    image_folder: Path, tmp_path: Path
) -> None:
    torchrun = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2",
        "--master-addr=127.0.0.1", f"--master-port={free_port()}",
    ]  # fmt: skip
    common: list[str | Path] = [
        "--data", image_folder, "--cache-dir", tmp_path / "cache", "--epochs", "1",
        "--val-size", "10", "--batch-size", "8", "--name", "tiny",
    ]  # fmt: skip
    repo = tmp_path / "models"
    ddp = _train(
        torchrun, *common, "--repository", repo, "--runs-dir", tmp_path / "ddp", cwd=tmp_path
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    hashes = dict(re.findall(r"rank (\d)/2: weights sha256 ([0-9a-f]{64})", ddp.stdout))
    assert set(hashes) == {"0", "1"}, ddp.stdout
    assert hashes["0"] == hashes["1"]
    assert ddp.stdout.count("Epoch 1/1 - ") == 1  # rank 0 alone logs
    assert [p.name for p in (repo / "tiny").iterdir()] == ["1"]  # and alone publishes
    (ddp_run,) = (tmp_path / "ddp").iterdir()
    assert (ddp_run / "last.pt").exists()

    # The same global batch of 8 in one process: the same images per step, the same gradients
    # up to the order of float sums, so the same weights within rounding.
    alone = _train(
        [sys.executable], *common, "--threads", "1", "--no-publish",
        "--repository", repo, "--runs-dir", tmp_path / "alone",
        cwd=tmp_path,
    )  # fmt: skip
    assert alone.returncode == 0, alone.stderr[-3000:]
    (alone_run,) = (tmp_path / "alone").iterdir()
    ddp_weights, alone_weights = _weights(ddp_run), _weights(alone_run)
    for key in alone_weights:
        torch.testing.assert_close(ddp_weights[key], alone_weights[key], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_distributed_run_resumes_from_a_lone_runs_checkpoint(
    image_folder: Path, tmp_path: Path
) -> None:
    common: list[str | Path] = [
        "--data", image_folder, "--cache-dir", tmp_path / "cache", "--val-size", "10",
        "--batch-size", "8", "--repository", tmp_path / "models", "--name", "tiny",
    ]  # fmt: skip
    first = _train(
        [sys.executable], *common, "--epochs", "1", "--threads", "1", "--no-publish",
        "--runs-dir", tmp_path / "runs",
        cwd=tmp_path,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    # What a 2-epoch run leaves when it is stopped after epoch 1: the same file, asking for 2.
    state = torch.load(run_dir / "last.pt", weights_only=True)
    state["config"]["epochs"] = 2
    torch.save(state, run_dir / "last.pt")

    torchrun = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2",
        "--master-addr=127.0.0.1", f"--master-port={free_port()}",
    ]  # fmt: skip
    resumed = _train(torchrun, *common, "--resume", run_dir / "last.pt", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "1 of 2 epochs done" in resumed.stdout and "Epoch 2/2 - " in resumed.stdout
    assert "Epoch 1/2" not in resumed.stdout
    card = read_card(tmp_path / "models" / "tiny" / "1")
    assert [h["epoch"] for h in card.training["history"]] == [1, 2]
    assert [p.name for p in (tmp_path / "models" / "tiny").iterdir()] == ["1"]
    assert torch.load(run_dir / "last.pt", weights_only=True)["epoch"] == 2


def test_torchrun_environment_names_the_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    assert world_from_env() == World()
    for name, value in {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    world = world_from_env()
    assert (world.rank, world.size, world.local_rank, world.local_size) == (3, 4, 1, 2)
    assert world.distributed and not world.is_main


@pytest.mark.parametrize(("rows", "size"), [(32, 2), (7, 2), (1, 2), (10, 4)])
def test_rank_shares_split_every_global_batch(rows: int, size: int) -> None:
    batch = torch.randperm(100)[:rows]
    shares = [rank_share(batch, World(rank, size, rank, size)) for rank in range(size)]
    assert sorted(torch.cat(shares).tolist()) == sorted(batch.tolist())  # all rows, none twice
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


class Interrupted(Exception):
    pass


def _stop_after_epoch(n: int) -> Callable[[str], None]:
    def log(line: str) -> None:
        if line.startswith(f"Epoch {n}/"):
            raise Interrupted  # as Ctrl-C right after the epoch's checkpoint

    return log


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_interrupted_run_resumes_to_the_same_weights(tmp_path: Path, ema: float) -> None:
    config = TrainConfig(epochs=3, batch_size=16, val_size=20, threads=1, lr=3e-3, ema=ema)
    images, labels = class_images(8, seed=0)
    fit, val = train_val_split(Split(images, labels), config.val_size, config.seed)
    quiet = lambda line: None  # noqa: E731
    whole = train_model(config, fit, val, quiet, checkpoint=tmp_path / "whole.pt")

    last = tmp_path / "last.pt"
    with pytest.raises(Interrupted):
        train_model(config, fit, val, _stop_after_epoch(1), checkpoint=last)
    assert torch.load(last, weights_only=True)["epoch"] == 1
    lines: list[str] = []
    resumed = train_model(config, fit, val, lines.append, checkpoint=last, resume=last)

    assert lines[0].startswith("Resuming from") and lines[1].startswith("Epoch 2/3")
    assert len(resumed.history) == len(whole.history) == 3
    assert resumed.best_epoch == whole.best_epoch
    for a, b in zip(resumed.history, whole.history, strict=True):
        assert {k: v for k, v in a.items() if k != "seconds"} == {
            k: v for k, v in b.items() if k != "seconds"
        }
    expected = whole.model.state_dict()
    for key, value in resumed.model.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0)
    assert torch.load(last, weights_only=True)["epoch"] == 3
