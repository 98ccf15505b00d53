"""The retrain job's feedback: read from a real prediction log (the service's own table),
de-duplicated by pixels, capped per class, held out by hash; and the JPEG augmentation."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from service.core.errors import DataError
from tests.support.feedback_log import write_log
from tests.support.training_inputs import class_images
from training.config import TrainConfig
from training.feedback import choose, is_held_out, read_feedback
from training.jpeg import JpegEpochs, reencode


def digest(image: np.ndarray) -> str:
    return hashlib.sha256(image.tobytes()).hexdigest()


def test_feedback_keeps_labelled_captured_images_of_the_model_once_with_their_last_label(
    tmp_path: Path,
) -> None:
    images, labels = class_images(3, seed=0)  # 30 images, 3 per class
    rows: list[tuple[str, np.ndarray | None, int | None]] = [
        ("net", image, int(label)) for image, label in zip(images, labels, strict=True)
    ]
    rows += [
        ("net", images[0], 7),  # the same pixels relabelled: the last label wins
        ("net", images[1], None),  # no label: not used
        ("net", None, 4),  # labelled, not captured: not used
        ("other", images[2], 5),  # another model's traffic
    ]
    log = write_log(tmp_path / "log.sqlite3", rows)
    feedback = read_feedback(str(log), "net", holdout_share=0.0)
    assert feedback.summary["rows"] == 31 and feedback.summary["unique_images"] == 30
    assert len(feedback.train) == 30 and len(feedback.holdout) == 0
    kept = zip(feedback.train.images, feedback.train.labels, strict=True)
    by_hash = {digest(image): int(label) for image, label in kept}
    assert by_hash[digest(images[0])] == 7
    assert by_hash[digest(images[5])] == int(labels[5])


def test_the_cap_keeps_the_newest_images_of_each_class() -> None:
    labels = {f"{i:064x}": i % 2 for i in range(10)}  # oldest first: classes 0,1,0,1,...
    train, holdout, dropped = choose(labels, cap_per_class=2, holdout_share=0.0)
    assert dropped == 6 and holdout == {}
    assert sorted(train) == [f"{i:064x}" for i in (6, 7, 8, 9)]


def test_the_held_out_side_is_fixed_by_the_pixels_and_near_the_share() -> None:
    digests = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(2000)]
    held = [d for d in digests if is_held_out(d, 0.2)]
    assert 0.17 < len(held) / len(digests) < 0.23
    labels = dict.fromkeys(digests, 3)
    for share in (0.2, 0.2):  # the same answer every run, whatever else is in the log
        _, holdout, _ = choose(labels, cap_per_class=10_000, holdout_share=share)
        assert sorted(holdout) == sorted(held)
    _, fewer, _ = choose(dict.fromkeys(digests[:500], 3), 10_000, 0.2)
    assert set(fewer) == set(held) & set(digests[:500])


def test_a_missing_file_is_a_clear_error_and_is_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "no-such.sqlite3"
    with pytest.raises(DataError, match="no such prediction log"):
        read_feedback(str(missing), "net")
    assert not missing.exists()


def test_a_file_that_is_not_a_prediction_log_is_a_clear_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"not a database at all" * 100)
    with pytest.raises(DataError, match="cannot read the prediction log"):
        read_feedback(str(junk), "net")
    with pytest.raises(DataError, match="cannot read the prediction log"):
        read_feedback("sqlite:///" + str(tmp_path / "other.sqlite3"), "net")  # no table


def test_reencoding_is_seeded_and_touches_the_share_asked_for() -> None:
    images, _ = class_images(20, seed=1)  # 200
    same = reencode(images, 0.5, (30, 95), seed=0, epoch=1)
    assert np.array_equal(same, reencode(images, 0.5, (30, 95), seed=0, epoch=1))
    changed = np.any(same != images, axis=(1, 2, 3)).mean()
    assert 0.35 < changed <= 0.65
    assert np.array_equal(reencode(images, 0.0, (30, 95), 0, 1), images)
    assert not np.array_equal(same, reencode(images, 0.5, (30, 95), seed=0, epoch=2))


def test_jpeg_epochs_give_each_epoch_its_seeded_copy() -> None:
    images, _ = class_images(2, seed=2)
    config = TrainConfig(epochs=3, jpeg_p=1.0, jpeg_min_quality=40, jpeg_max_quality=40, seed=5)
    epochs = JpegEpochs(images, config, first_epoch=2)
    try:
        for epoch in (2, 3):
            expected = reencode(images, 1.0, (40, 40), seed=8, epoch=epoch)
            assert np.array_equal(epochs.images_for(epoch), expected)
    finally:
        epochs.close()
    with pytest.raises(ValueError, match="jpeg-p"):
        JpegEpochs(images, TrainConfig(jpeg_p=1.5), 1)


def test_an_unreachable_database_is_a_clear_error_that_hides_its_password() -> None:
    with pytest.raises(DataError, match="cannot read the prediction log") as raised:
        read_feedback("postgresql+psycopg://user:s3cret@127.0.0.1:1/log", "net")
    assert "s3cret" not in str(raised.value)
    with pytest.raises(DataError, match="not a SQLAlchemy database URL"):
        read_feedback("http:://bad", "net")
