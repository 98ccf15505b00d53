"""Both CIFAR-10 readers on small fixtures, including the bad files they must refuse by name."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import training.data as data_module
from service.core.errors import DataError
from tests.support.training_inputs import class_images
from training.data import (
    CLASS_NAMES,
    Split,
    download_cifar10,
    load_cifar10,
    read_image_folder,
    train_val_split,
)


def test_image_folder_reads_pixels_and_standard_label_order(image_folder: Path) -> None:
    data = load_cifar10(image_folder, cache_dir=None)
    assert data.train.images.shape == (40, 32, 32, 3)
    assert data.train.images.dtype == np.uint8
    assert data.test.images.shape == (20, 32, 32, 3)
    cat = Image.open(image_folder / "train" / "cat" / "0012.png")
    index = int(np.flatnonzero(data.train.labels == CLASS_NAMES.index("cat"))[0])
    np.testing.assert_array_equal(data.train.images[index], np.asarray(cat))
    assert sorted(set(data.train.labels.tolist())) == list(range(10))
    assert data.identity["format"] == "image-folder"
    assert len(data.identity["sha256"]) == 64


def test_second_read_comes_from_the_cache(
    image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    first = read_image_folder(image_folder, cache)
    assert len(list(cache.glob("*.npz"))) == 1

    def refuse(path: Path, raw: bytes) -> np.ndarray:
        raise AssertionError("decoded again instead of using the cache")

    monkeypatch.setattr(data_module, "_decode", refuse)
    second = read_image_folder(image_folder, cache)
    np.testing.assert_array_equal(first.train.images, second.train.images)
    np.testing.assert_array_equal(first.test.labels, second.test.labels)
    assert first.identity["sha256"] == second.identity["sha256"]


def test_changed_file_invalidates_the_cache(image_folder: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = read_image_folder(image_folder, cache)
    target = image_folder / "test" / "dog" / "0010.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(target)
    os.utime(target, ns=(1, 1))
    second = read_image_folder(image_folder, cache)
    assert first.identity["sha256"] != second.identity["sha256"]
    assert second.test.images.sum() < first.test.images.sum()


def test_unknown_class_folder_is_named(image_folder: Path) -> None:
    (image_folder / "train" / "unicorn").mkdir()
    with pytest.raises(DataError, match="unicorn"):
        load_cifar10(image_folder, cache_dir=None)


def test_wrong_image_size_names_the_file(image_folder: Path) -> None:
    bad = image_folder / "train" / "ship" / "9999.png"
    Image.new("RGB", (33, 32)).save(bad)
    with pytest.raises(DataError, match=r"9999\.png.*33x32"):
        load_cifar10(image_folder, cache_dir=None)


def test_truncated_image_names_the_file(image_folder: Path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(class_images(1, 3)[0][0]).save(buffer, format="JPEG")
    bad = image_folder / "test" / "frog" / "0042.jpg"
    bad.write_bytes(buffer.getvalue()[:200])
    with pytest.raises(DataError, match=r"0042\.jpg.*(corrupt|truncated)"):
        load_cifar10(image_folder, cache_dir=None)


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such data folder"):
        load_cifar10(tmp_path / "nope")


def test_python_batches_convert_chw_rows_to_hwc(python_batches: Path) -> None:
    data = load_cifar10(python_batches.parent)
    assert data.train.images.shape == (100, 32, 32, 3)
    assert data.test.images.shape == (20, 32, 32, 3)
    expected, labels = class_images(2, 0)  # data_batch_1 was written from seed 0
    np.testing.assert_array_equal(data.train.images[:20], expected)
    np.testing.assert_array_equal(data.train.labels[:20], labels)
    assert data.identity["format"] == "cifar-10-batches-py"


def test_missing_batch_file_is_named(python_batches: Path) -> None:
    (python_batches / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3"):
        load_cifar10(python_batches)


def test_corrupt_batch_file_is_named(python_batches: Path) -> None:
    (python_batches / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="test_batch"):
        load_cifar10(python_batches)


def _official_like_archive(path: Path, batches: Path) -> str:
    with tarfile.open(path, "w:gz") as tar:
        tar.add(batches, arcname="cifar-10-batches-py")
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_download_checks_md5_and_unpacks(python_batches: Path, tmp_path: Path) -> None:
    archive = tmp_path / "cifar-10-python.tar.gz"
    md5 = _official_like_archive(archive, python_batches)
    dest = tmp_path / "dest"
    folder = download_cifar10(dest, url=archive.as_uri(), md5=md5)
    assert len(load_cifar10(folder).train) == 100


def test_download_with_bad_checksum_leaves_nothing(python_batches: Path, tmp_path: Path) -> None:
    archive = tmp_path / "cifar-10-python.tar.gz"
    _official_like_archive(archive, python_batches)
    dest = tmp_path / "dest"
    with pytest.raises(DataError, match="bad checksum"):
        download_cifar10(dest, url=archive.as_uri(), md5="0" * 32)
    assert list(dest.iterdir()) == []


def test_validation_is_held_out_of_train_and_disjoint() -> None:
    images, labels = class_images(10, 0)
    images[:, 0, 0, 0] = np.arange(100)  # a unique tag per image
    fit, val = train_val_split(Split(images, labels), 20, seed=1)
    assert (len(fit), len(val)) == (80, 20)
    tags = set(fit.images[:, 0, 0, 0].tolist())
    assert tags.isdisjoint(val.images[:, 0, 0, 0].tolist())
    with pytest.raises(DataError):
        train_val_split(Split(images, labels), 100, seed=1)


def test_sample_is_random_not_the_first_class() -> None:
    images, labels = class_images(10, 0)
    subset = Split(images, labels).sample(30, seed=0)
    assert len(subset) == 30
    assert len(set(subset.labels.tolist())) > 3
