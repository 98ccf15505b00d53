"""The model card (``service.core.card``): what it keeps through JSON, what it refuses and with
which message, reading it from a version folder, and the model's digest."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from service.core.card import (
    CARD_FILE,
    DEFAULT_SIGNATURE,
    FORMAT_VERSION,
    ModelCard,
    TensorSpec,
    read_card,
    sha256_file,
)
from service.core.errors import InvalidCard


def card_fields(**changes: Any) -> dict[str, Any]:
    """A valid card as JSON would hold it, with ``changes`` applied."""
    fields: dict[str, Any] = {
        "name": "cifar10_cnn",
        "version": 2,
        "class_names": ["cat", "dog"],
        "inputs": [{"name": "images", "datatype": "UINT8", "shape": [-1, 32, 32, 3]}],
        "outputs": [
            {"name": "logits", "datatype": "FP32", "shape": [-1, 2]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]},
        ],
        "sha256": "ab" * 32,
        "metrics": {"test_accuracy": 0.7},
        "training": {"history": [{"epoch": 1, "val_accuracy": 0.6}]},
        "libraries": {"torch": "2.13.0"},
        "git_commit": "0123abc",
        "created": "2024-01-01T00:00:00Z",
    }
    return {**fields, **changes}


def test_a_card_keeps_every_field_through_json() -> None:
    card = ModelCard.from_dict(card_fields())
    assert card.inputs == [TensorSpec("images", "UINT8", [-1, 32, 32, 3])]
    assert card.outputs[1] == TensorSpec("probabilities", "FP32", [-1, 2])
    assert card.metrics == {"test_accuracy": 0.7} and card.git_commit == "0123abc"
    text = card.to_json()
    assert text.endswith("}\n")
    assert ModelCard.from_dict(json.loads(text)) == card
    assert json.loads(text) == card.to_dict()
    assert card.to_dict()["inputs"][0] == {
        "name": "images",
        "datatype": "UINT8",
        "shape": [-1, 32, 32, 3],
    }


def test_fields_left_out_take_their_defaults() -> None:
    minimal = card_fields()
    for key in ("metrics", "training", "libraries", "git_commit", "created"):
        del minimal[key]
    card = ModelCard.from_dict(minimal)
    assert card.signature_name == DEFAULT_SIGNATURE == "serving_default"
    assert card.format_version == FORMAT_VERSION == 1
    assert (card.metrics, card.training, card.quantization, card.libraries) == ({}, {}, {}, {})
    assert card.git_commit is None and card.created == ""


def test_reading_normalises_what_it_does_not_validate() -> None:
    source = card_fields(git_commit=12345, libraries={"onnx": 1.17}, created=20240101)
    card = ModelCard.from_dict(source)
    assert card.git_commit is None  # not a string: no commit recorded
    assert card.libraries == {"onnx": "1.17"}
    assert card.created == "20240101"
    source["metrics"]["test_accuracy"] = 0.0  # the card holds its own copy
    assert card.metrics == {"test_accuracy": 0.7}


BROKEN = [
    ({"format_version": 2}, "unsupported card format_version 2 (this reads 1)"),
    ({"name": ""}, "'name' must be a non-empty string"),
    ({"name": 7}, "'name' must be a non-empty string"),
    ({"version": 0}, "'version' must be a positive integer"),
    ({"version": True}, "'version' must be a positive integer"),
    ({"version": "2"}, "'version' must be a positive integer"),
    ({"class_names": []}, "'class_names' must be a non-empty list of strings"),
    ({"class_names": ["cat", 1]}, "'class_names' must be a non-empty list of strings"),
    ({"sha256": "ab"}, "'sha256' must be the 64-character hex digest of model.onnx"),
    ({"sha256": None}, "'sha256' must be the 64-character hex digest of model.onnx"),
    ({"inputs": []}, "'inputs' must be a non-empty list"),
    ({"outputs": {"name": "logits"}}, "'outputs' must be a non-empty list"),
    ({"inputs": ["images"]}, "inputs[0] must be an object"),
    (
        {"inputs": [{"datatype": "UINT8", "shape": [1]}]},
        "inputs[0].name must be a non-empty string",
    ),
    (
        {"outputs": [{"name": "logits", "datatype": "FLOAT", "shape": [1]}]},
        "outputs[0].datatype must be one of ['BOOL', 'BYTES', 'FP16', 'FP32', 'FP64', 'INT16', "
        "'INT32', 'INT64', 'INT8', 'UINT16', 'UINT32', 'UINT64', 'UINT8']",
    ),
    (
        {"inputs": [{"name": "images", "datatype": "UINT8", "shape": [-1, 0]}]},
        "inputs[0].shape must be a list of positive integers or -1",
    ),
    (
        {"inputs": [{"name": "images", "datatype": "UINT8", "shape": [True]}]},
        "inputs[0].shape must be a list of positive integers or -1",
    ),
    (
        {"inputs": [{"name": "images", "datatype": "UINT8", "shape": [-2]}]},
        "inputs[0].shape must be a list of positive integers or -1",
    ),
    ({"metrics": [0.7]}, "'metrics' must be an object"),
    ({"quantization": "int8"}, "'quantization' must be an object"),
    ({"libraries": ["torch"]}, "'libraries' must be an object"),
    ({"signature_name": ""}, "'signature_name' must be a non-empty string"),
]


@pytest.mark.parametrize(("changes", "message"), BROKEN, ids=[m for _, m in BROKEN])
def test_a_broken_card_is_refused_with_what_is_wrong(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidCard) as raised:
        ModelCard.from_dict(card_fields(**changes))
    assert raised.value.message == message


def test_a_card_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(InvalidCard, match="the card must be a JSON object"):
        ModelCard.from_dict([card_fields()])


def test_read_card_reads_the_folders_card_and_says_what_is_wrong_with_it(tmp_path: Path) -> None:
    (tmp_path / CARD_FILE).write_text(json.dumps(card_fields()), encoding="utf-8")
    assert read_card(tmp_path) == ModelCard.from_dict(card_fields())

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InvalidCard) as raised:
        read_card(empty)
    assert raised.value.message == f"{CARD_FILE}: no card beside the model"  # clients see it

    (empty / CARD_FILE).write_text("{not json", encoding="utf-8")
    with pytest.raises(InvalidCard, match=r"card\.json: unreadable card: Expecting property name"):
        read_card(empty)
    (empty / CARD_FILE).write_bytes(b'{"name": "\xff"}')
    with pytest.raises(InvalidCard, match=r"card\.json: unreadable card: 'utf-8' codec"):
        read_card(empty)
    (empty / CARD_FILE).unlink()
    (empty / CARD_FILE).mkdir()  # an OS error's own text names the path
    with pytest.raises(InvalidCard) as raised:
        read_card(empty)
    assert raised.value.message == f"{CARD_FILE}: unreadable card: Is a directory"
    (empty / CARD_FILE).rmdir()
    (empty / CARD_FILE).write_text(json.dumps(card_fields(version=-1)), encoding="utf-8")
    with pytest.raises(InvalidCard, match="'version' must be a positive integer"):
        read_card(empty)


def test_sha256_file_is_the_digest_of_the_whole_file(tmp_path: Path) -> None:
    data = bytes(range(256)) * 9000  # over two of its 1 MiB chunks
    path = tmp_path / "model.onnx"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    path.write_bytes(b"")
    assert sha256_file(path) == hashlib.sha256(b"").hexdigest()
