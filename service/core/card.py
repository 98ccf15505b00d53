"""The model card: the JSON beside ``model.onnx`` that training writes and the service reads.

With the graph it is the whole contract between training and serving: what goes in and out, the
class names, how pixels are prepared (inside the graph), the architecture and its layer table, and
the evidence (accuracy, data, libraries, commit) behind the published numbers.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from service.core.datatypes import DATATYPES
from service.core.errors import InvalidCard, file_problem
from service.core.regular_files import MAX_JSON_BYTES, read_regular

CARD_FILE = "card.json"
MODEL_FILE = "model.onnx"
FORMAT_VERSION = 1
DEFAULT_SIGNATURE = "serving_default"  # TF Serving's name for a model's default signature
# The two kinds of model a card can describe. An image classifier takes one UINT8 [-1, H, W, C]
# input and answers class probabilities (classify, top-k, inspection, the page); a tensor model
# is any graph whose inputs and outputs the card lists, served on the tensor paths only. A card
# without ``kind`` is an image classifier, as every card was before there were two.
IMAGE_CLASSIFIER = "image_classifier"
TENSOR = "tensor"
KINDS = (IMAGE_CLASSIFIER, TENSOR)


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output as the Open Inference Protocol names it; -1 marks a dynamic axis."""

    name: str
    datatype: str
    shape: list[int]

    @classmethod
    def from_dict(cls, data: Any, where: str) -> TensorSpec:
        if not isinstance(data, Mapping):
            raise InvalidCard(f"{where} must be an object")
        name, datatype, shape = data.get("name"), data.get("datatype"), data.get("shape")
        if not isinstance(name, str) or not name:
            raise InvalidCard(f"{where}.name must be a non-empty string")
        if datatype not in DATATYPES:
            raise InvalidCard(f"{where}.datatype must be one of {sorted(DATATYPES)}")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and (d == -1 or d > 0) for d in shape
        ):
            raise InvalidCard(f"{where}.shape must be a list of positive integers or -1")
        return cls(name, str(datatype), list(shape))


@dataclass(frozen=True)
class ModelCard:
    name: str
    version: int
    class_names: list[str]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    sha256: str
    preprocessing: dict[str, Any] = field(default_factory=dict)
    architecture: dict[str, Any] = field(default_factory=dict)
    layer_table: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    dataset: dict[str, Any] = field(default_factory=dict)
    quantization: dict[str, Any] = field(default_factory=dict)  # empty for a float graph
    # What the model predicts on the test split (``service.core.quality.reference``) and its
    # temperature calibration; both optional (older cards lack them), kept as given.
    reference: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)
    libraries: dict[str, str] = field(default_factory=dict)
    git_commit: str | None = None
    created: str = ""
    # The graph's one signature, by the name TF Serving-style ``:predict`` bodies may give it.
    signature_name: str = DEFAULT_SIGNATURE
    format_version: int = FORMAT_VERSION
    kind: str = IMAGE_CLASSIFIER  # IMAGE_CLASSIFIER or TENSOR

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: Any) -> ModelCard:
        """Validate the fields the service relies on; the evidence fields are kept as given."""
        if not isinstance(data, Mapping):
            raise InvalidCard("the card must be a JSON object")
        fmt = data.get("format_version", FORMAT_VERSION)
        if fmt != FORMAT_VERSION:
            raise InvalidCard(
                f"unsupported card format_version {fmt!r} (this reads {FORMAT_VERSION})"
            )
        name, version = data.get("name"), data.get("version")
        if not isinstance(name, str) or not name:
            raise InvalidCard("'name' must be a non-empty string")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise InvalidCard("'version' must be a positive integer")
        sha = data.get("sha256")
        if not isinstance(sha, str) or len(sha) != 64:
            raise InvalidCard("'sha256' must be the 64-character hex digest of model.onnx")
        libraries = data.get("libraries", {})
        if not isinstance(libraries, Mapping):
            raise InvalidCard("'libraries' must be an object")
        commit = data.get("git_commit")
        signature = data.get("signature_name", DEFAULT_SIGNATURE)
        if not isinstance(signature, str) or not signature:
            raise InvalidCard("'signature_name' must be a non-empty string")
        kind = data.get("kind", IMAGE_CLASSIFIER)
        if kind not in KINDS:
            raise InvalidCard(f"'kind' must be one of {list(KINDS)}, not {kind!r}")
        return cls(
            name=name,
            version=version,
            kind=str(kind),
            class_names=_class_names(data, required=kind == IMAGE_CLASSIFIER),
            inputs=_tensors(data, "inputs"),
            outputs=_tensors(data, "outputs"),
            sha256=sha,
            libraries={str(k): str(v) for k, v in libraries.items()},
            git_commit=commit if isinstance(commit, str) else None,
            created=str(data.get("created", "")),
            signature_name=signature,
            preprocessing=_object(data, "preprocessing"),
            architecture=_object(data, "architecture"),
            layer_table=_object(data, "layer_table"),
            metrics=_object(data, "metrics"),
            training=_object(data, "training"),
            dataset=_object(data, "dataset"),
            quantization=_object(data, "quantization"),
            reference=_object(data, "reference"),
            calibration=_object(data, "calibration"),
        )


def _class_names(data: Mapping[str, Any], required: bool) -> list[str]:
    """An image classifier names its classes; a tensor model may (its scores' labels)."""
    classes = data.get("class_names")
    if classes is None and not required:
        return []
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise InvalidCard(
            f"'class_names' must be a {'non-empty ' if required else ''}list of strings"
        )
    if required and not classes:
        raise InvalidCard("'class_names' must be a non-empty list of strings")
    return list(classes)


def _tensors(data: Mapping[str, Any], key: str) -> list[TensorSpec]:
    items = data.get(key)
    if not isinstance(items, list) or not items:
        raise InvalidCard(f"'{key}' must be a non-empty list")
    return [TensorSpec.from_dict(t, f"{key}[{i}]") for i, t in enumerate(items)]


def _object(data: Mapping[str, Any], key: str) -> dict[str, Any]:
    """One of the card's free-form evidence objects: kept as given, only checked to be one."""
    value = data.get(key, {})
    if not isinstance(value, Mapping):
        raise InvalidCard(f"'{key}' must be an object")
    return dict(value)


def read_card(version_dir: Path) -> ModelCard:
    """Read and validate ``card.json`` in a version folder."""
    path = version_dir / CARD_FILE
    try:
        data = json.loads(read_regular(path, MAX_JSON_BYTES).decode("utf-8"))
    except FileNotFoundError:
        raise InvalidCard(f"{CARD_FILE}: no card beside the model") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidCard(f"{CARD_FILE}: unreadable card: {file_problem(exc)}") from None
    return ModelCard.from_dict(data)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
