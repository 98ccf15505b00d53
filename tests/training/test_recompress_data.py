"""scripts/recompress_data.py: the same data set, re-encoded at a lower JPEG quality."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from scripts.recompress_data import main, recompress
from training.data import load_cifar10


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


def test_bad_arguments_are_refused(image_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main([str(image_folder), str(tmp_path / "out"), "--quality", "0"])
    with pytest.raises(SystemExit):
        main([str(image_folder), str(image_folder)])
    with pytest.raises(SystemExit, match="no <split>"):
        main([str(tmp_path / "empty"), str(tmp_path / "out")])
