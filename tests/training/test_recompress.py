"""``python -m training recompress``: the same data set, re-encoded at a lower JPEG quality."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from training.__main__ import main
from training.data import load_cifar10
from training.recompress import recompress


def test_the_copy_keeps_layout_and_labels_and_loses_more_at_lower_quality(
    image_folder: Path, tmp_path: Path
) -> None:
    original = load_cifar10(image_folder, cache_dir=None)
    high = recompress(image_folder, tmp_path / "q95", 95)
    low = recompress(image_folder, tmp_path / "q30", 30)
    assert high["files"] == low["files"] == len(original.train) + len(original.test)
    assert 0 < high["mean_abs_diff"] < low["mean_abs_diff"]
    copy = load_cifar10(tmp_path / "q30", cache_dir=None)
    assert (copy.train.labels == original.train.labels).all()
    assert (copy.test.labels == original.test.labels).all()
    measured = np.abs(
        copy.train.images.astype(np.int16) - original.train.images.astype(np.int16)
    ).mean()
    assert measured > high["mean_abs_diff"]  # the pixels the loader reads did change
    assert sorted(p.suffix for p in (tmp_path / "q30").rglob("*.*")) == [".jpg"] * int(low["files"])


def test_the_command_prints_and_writes_its_figures(
    image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = tmp_path / "results"
    argv = ["recompress", str(image_folder), str(tmp_path / "q50"), "--results-dir", str(results)]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["quality"] == 50 and printed["files"] == 60
    record = json.loads((results / "recompress-q50.json").read_text())
    where = {"source": str(image_folder), "dest": str(tmp_path / "q50")}
    assert record["results"] == {**where, **printed}


def test_bad_arguments_are_refused(
    image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv in (
        [str(image_folder), str(tmp_path / "out"), "--quality", "0"],
        [str(image_folder), str(image_folder)],
    ):
        with pytest.raises(SystemExit) as exit_:
            main(["recompress", *argv])
        assert exit_.value.code == 2
    assert main(["recompress", str(tmp_path / "empty"), str(tmp_path / "out")]) == 1
    assert "no <split>/<class>/<image> files" in capsys.readouterr().err
