"""The retrain job's feedback: read from a real prediction log (the service's own table),
admins' labels only by default, de-duplicated by pixels, capped per class, held out by a keyed
hash; and the JPEG augmentation."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from service.core.errors import DataError
from tests.support.feedback_log import LogRow, make_log_without_provenance, write_log
from tests.support.training_inputs import class_images
from training.config import TrainConfig
from training.feedback import choose, is_held_out, read_feedback
from training.holdout_key import holdout_key
from training.jpeg import JpegEpochs, reencode

KEY = b"k" * 32


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
    feedback = read_feedback(str(log), "net", key=KEY, holdout_share=0.0)
    assert feedback.summary["rows"] == 31 and feedback.summary["unique_images"] == 30
    assert len(feedback.train) == 30 and len(feedback.holdout) == 0
    kept = zip(feedback.train.images, feedback.train.labels, strict=True)
    by_hash = {digest(image): int(label) for image, label in kept}
    assert by_hash[digest(images[0])] == 7
    assert by_hash[digest(images[5])] == int(labels[5])


def test_the_cap_keeps_admins_labels_first_and_a_flood_cannot_displace_every_earlier_one() -> None:
    """Newest-first let one client's 20,000 labels displace all 1,000 earlier ones."""
    earlier = {f"{i:064x}": (3, False) for i in range(100)}
    admins = {f"{i:064x}": (3, True) for i in range(100, 110)}
    flood = {f"{i:064x}": (3, False) for i in range(110, 1110)}  # newest, 10x the earlier
    train, holdout, dropped = choose({**earlier, **admins, **flood}, 100, 0.0, KEY)
    assert dropped == 1110 - 100 and holdout == {}
    assert set(admins) <= set(train)  # nobody else's labels displace an admin's
    assert 2 <= len(set(earlier) & set(train)) <= 20  # about 90 * 100 / 1100: not none
    again, _, _ = choose({**flood, **admins, **earlier}, 100, 0.0, KEY)
    assert again == train  # a sample fixed by the key, not by the order labels came in


def test_the_held_out_side_is_fixed_by_the_key_and_near_the_share() -> None:
    digests = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(2000)]
    held = [d for d in digests if is_held_out(d, 0.2, KEY)]
    assert 0.17 < len(held) / len(digests) < 0.23
    labels = dict.fromkeys(digests, (3, True))
    for share in (0.2, 0.2):  # the same answer every run, whatever else is in the log
        _, holdout, _ = choose(labels, cap_per_class=10_000, holdout_share=share, key=KEY)
        assert sorted(holdout) == sorted(held)
    _, fewer, _ = choose(dict.fromkeys(digests[:500], (3, True)), 10_000, 0.2, KEY)
    assert set(fewer) == set(held) & set(digests[:500])


def test_a_labeller_who_steers_the_plain_hash_cannot_steer_the_keyed_split(tmp_path: Path) -> None:
    """The audit nudged each image until the first 16 hex digits of its SHA-256 put it on the
    training side: 20,000 images, none held out. With the key, a share is held out anyway."""
    steered = [
        d
        for d in (hashlib.sha256(str(i).encode()).hexdigest() for i in range(5000))
        if int(d[:16], 16) / 16**16 >= 0.2  # the old rule's training side
    ]
    key = holdout_key(tmp_path / "models" / ".feedback-holdout.key")
    held = [d for d in steered if is_held_out(d, 0.2, key)]
    assert 0.17 < len(held) / len(steered) < 0.23
    assert holdout_key(tmp_path / "models" / ".feedback-holdout.key") == key  # made once, kept
    assert (tmp_path / "models" / ".feedback-holdout.key").stat().st_mode & 0o077 == 0
    other = holdout_key(tmp_path / "other.key")
    assert other != key and [d for d in steered if is_held_out(d, 0.2, other)] != held


def test_only_admins_labels_are_taken_unless_open_labels_are_asked_for(tmp_path: Path) -> None:
    """One FEEDBACK_OPEN client took over the retrain's feedback; its labels, and those of a log
    that never recorded who labelled, now need --feedback-open-labels."""
    images, labels = class_images(2, seed=3)  # 20
    rows: list[LogRow] = [
        ("net", im, int(y)) for im, y in zip(images[:10], labels[:10], strict=True)
    ]
    rows += [("net", im, 0, "open") for im in images[10:]]  # a flood, all "airplane"
    rows += [("net", images[0], 0, "open")]  # an admin's pixels sent and labelled again
    log = write_log(tmp_path / "log.sqlite3", rows)
    admins = read_feedback(str(log), "net", key=KEY, holdout_share=0.0)
    assert admins.summary["not_admin_labels"] == 11 and admins.summary["unique_images"] == 10
    assert sorted(map(digest, admins.train.images)) == sorted(map(digest, images[:10]))
    assert "admins' only; 11 rows labelled by others" in admins.whose()
    every = read_feedback(str(log), "net", key=KEY, holdout_share=0.0, open_labels=True)
    assert every.summary["unique_images"] == 20 and "--feedback-open-labels, 11" in every.whose()
    kept = dict(zip(map(digest, every.train.images), every.train.labels.tolist(), strict=True))
    assert kept[digest(images[0])] == int(labels[0])  # the admin's label stands


def test_a_log_made_before_provenance_is_read_as_labels_of_unknown_origin(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    make_log_without_provenance(url)
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "UPDATE predictions SET image = :pixels", {"pixels": bytes(3072)}
        )
    engine.dispose()
    old = read_feedback(str(tmp_path / "old.sqlite3"), "tiny", key=KEY, holdout_share=0.0)
    assert old.summary["rows"] == 1 and old.summary["not_admin_labels"] == 1 and not len(old.train)
    every = read_feedback(
        str(tmp_path / "old.sqlite3"), "tiny", key=KEY, open_labels=True, holdout_share=0.0
    )
    assert len(every.train) == 1 and int(every.train.labels[0]) == 4


def test_a_missing_file_is_a_clear_error_and_is_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "no-such.sqlite3"
    with pytest.raises(DataError, match="no such prediction log"):
        read_feedback(str(missing), "net", key=KEY)
    assert not missing.exists()


def test_a_file_that_is_not_a_prediction_log_is_a_clear_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"not a database at all" * 100)
    with pytest.raises(DataError, match="cannot read the prediction log"):
        read_feedback(str(junk), "net", key=KEY)
    with pytest.raises(DataError, match="cannot read the prediction log"):
        read_feedback("sqlite:///" + str(tmp_path / "other.sqlite3"), "net", key=KEY)  # no table


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
        read_feedback("postgresql+psycopg://user:s3cret@127.0.0.1:1/log", "net", key=KEY)
    assert "s3cret" not in str(raised.value)
    with pytest.raises(DataError, match="not a SQLAlchemy database URL"):
        read_feedback("http:://bad", "net", key=KEY)


@pytest.mark.parametrize(
    "where",
    [
        pytest.param("sysfs", id="a folder no one may write in (sysfs: root neither)"),
        pytest.param("file", id="a repository that is a file"),
    ],
)
def test_a_key_that_cannot_be_made_is_a_clear_error(tmp_path: Path, where: str) -> None:
    """On a read-only repository the retrain's first use of the key, made there, ended in a raw
    OSError's traceback; it is a DataError that says what to do."""
    if where == "sysfs":
        if not Path("/sys/fs").is_dir():
            pytest.skip("no sysfs here")
        path = Path("/sys/fs") / ".feedback-holdout.key"
    else:
        (tmp_path / "models").write_text("")
        path = tmp_path / "models" / ".feedback-holdout.key"
    with pytest.raises(DataError, match="cannot make or read the feedback hold-out key") as caught:
        holdout_key(path)
    assert "--feedback-key" in caught.value.message and not path.exists()
