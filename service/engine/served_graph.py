"""What a version's graph and card must be to be served, and what onnx reads of the graph: the
card of a folder without ``card.json``, an image classifier's layer table and the external data
files it names (``read_graph``, in a child process for a large graph: ``large_graphs``)."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

from service.core.card import CARD_FILE, IMAGE_CLASSIFIER, MODEL_FILE, TENSOR, ModelCard, TensorSpec
from service.core.errors import InvalidCard
from service.core.limits import MAX_TENSOR_NAME_CHARS
from service.core.regular_files import MAX_MODEL_BYTES, read_regular
from service.engine.config_card import config_card
from service.engine.external_data import external_locations
from service.engine.layers import LayerReport, read_layers
from service.engine.triton_config import TritonConfig

PROBABILITIES = "probabilities"
NHWC = "FORMAT_NHWC"  # config.pbtxt's image layout


def check_tensors(
    kind: str, card: list[TensorSpec], graph: list[TensorSpec], fixes_dynamic: bool = False
) -> None:
    """Names, datatypes and shapes of the card must be those of the graph (-1: dynamic axis);
    ``fixes_dynamic``: a card built from config.pbtxt may fix an axis the graph leaves dynamic,
    as Triton's configs do."""
    card_by_name = {t.name: t for t in card}
    graph_by_name = {t.name: t for t in graph}
    if set(card_by_name) != set(graph_by_name):
        raise InvalidCard(
            f"card {kind} {sorted(card_by_name)} differ from the graph's {sorted(graph_by_name)}"
        )
    for name, spec in card_by_name.items():
        actual = graph_by_name[name]
        if spec.datatype != actual.datatype:
            raise InvalidCard(
                f"{kind[:-1]} {name!r}: card says {spec.datatype}, graph has {actual.datatype}"
            )
        if len(spec.shape) != len(actual.shape) or any(
            c != g and not (fixes_dynamic and g == -1)
            for c, g in zip(spec.shape, actual.shape, strict=True)
        ):
            raise InvalidCard(
                f"{kind[:-1]} {name!r}: card shape {spec.shape} differs from graph {actual.shape}"
            )


def check_serving_contract(card: ModelCard) -> None:
    """What this service needs to serve a model: an image classifier's one pixel input and its
    probabilities, or for a tensor model only distinct tensor names (the graph check does the
    rest)."""
    for tensor in (*card.inputs, *card.outputs):  # longer than a request may name
        if len(tensor.name) > MAX_TENSOR_NAME_CHARS:
            raise InvalidCard(
                f"a tensor's name is {len(tensor.name)} characters, more than the "
                f"{MAX_TENSOR_NAME_CHARS} a request may give"
            )
    if card.kind == TENSOR:
        _check_names(card)
        return
    if len(card.inputs) != 1:
        raise InvalidCard(f"expected one input (the images), the card lists {len(card.inputs)}")
    image = card.inputs[0]
    if image.datatype != "UINT8" or len(image.shape) != 4 or image.shape[0] != -1:
        raise InvalidCard(
            f"input {image.name!r} must be UINT8 [-1, H, W, C] pixels, "
            f"card says {image.datatype} {image.shape}"
        )
    if any(d == -1 for d in image.shape[1:]):
        raise InvalidCard(f"input {image.name!r} needs fixed H, W, C, card says {image.shape}")
    outputs = {t.name: t for t in card.outputs}
    if PROBABILITIES not in outputs:
        raise InvalidCard(f"no {PROBABILITIES!r} output among {sorted(outputs)}")
    classes = outputs[PROBABILITIES].shape[-1:]
    if classes != [len(card.class_names)]:
        raise InvalidCard(
            f"{PROBABILITIES!r} has shape {outputs[PROBABILITIES].shape} but the card names "
            f"{len(card.class_names)} classes"
        )


def _check_names(card: ModelCard) -> None:
    """A request names each tensor, so no two of a tensor model's inputs (or outputs) share one."""
    for kind, tensors in (("inputs", card.inputs), ("outputs", card.outputs)):
        names = [t.name for t in tensors]
        if len(set(names)) != len(names):
            raise InvalidCard(f"card {kind} {names} repeat a name")


def _image_or_tensor(card: ModelCard, config: TritonConfig | None) -> ModelCard:
    """A card built without card.json is a tensor model, or an image classifier where its
    config.pbtxt says so (one FORMAT_NHWC input, a labels file) and the image contract holds."""
    if config is None or not card.class_names or [t.format for t in config.inputs] != [NHWC]:
        return card
    image = replace(card, kind=IMAGE_CLASSIFIER)
    try:
        check_serving_contract(image)
    except InvalidCard:
        return card
    return image


def check_inside(path: Path, root: Path) -> None:
    """Refuse a version folder, or a file in it, that resolves (through symlinks) outside the
    repository: nothing outside ``root`` is ever read. The message names no path."""
    top = root.resolve()
    for item in (path, path / CARD_FILE, path / MODEL_FILE):
        if not item.resolve().is_relative_to(top):
            where = "the version folder" if item == path else item.name
            raise InvalidCard(f"{where} links outside the model repository; refused")


def read_model(path: Path) -> bytes:
    try:
        return read_regular(path / MODEL_FILE, MAX_MODEL_BYTES)
    except FileNotFoundError:
        raise InvalidCard(f"no {MODEL_FILE} in the version folder") from None
    except OSError as exc:
        raise InvalidCard(f"unreadable {MODEL_FILE}: {exc.strerror}") from None


class GraphFacts(NamedTuple):
    """What ``read_graph`` finds."""

    card: ModelCard
    layers: LayerReport | None  # an image classifier's layer table
    external: tuple[str, ...]  # the external data files the graph names


def read_model_again(path: Path, digest: str, when: str) -> bytes:
    """``model.onnx`` read again (in a child process), refused unless its sha256 is
    ``digest``, that of the bytes the server holds: it changed ``when``."""
    model_bytes = read_model(path)
    if hashlib.sha256(model_bytes).hexdigest() != digest:
        raise InvalidCard(f"{MODEL_FILE} changed {when}")
    return model_bytes


def read_graph(
    model_bytes: bytes,
    name: str,
    version: int,
    digest: str,
    card: ModelCard | None,
    config: TritonConfig | None,
) -> GraphFacts:
    """What onnx reads of a graph: the version's card where its folder has none (from the
    model's ``config.pbtxt``, or from the graph alone), checked against the serving contract,
    an image classifier's layer table and the external data files it names. Pure, so a child
    process can do it for a large graph (``read_graph_file``)."""
    if card is None:
        card = _image_or_tensor(config_card(name, version, digest, config, model_bytes), config)
    check_serving_contract(card)
    layers = None if card.kind == TENSOR else read_layers(model_bytes, card)
    return GraphFacts(card, layers, external_locations(model_bytes))


def read_graph_file(
    path: Path,
    digest: str,
    name: str,
    version: int,
    card: ModelCard | None,
    config: TritonConfig | None,
    root: Path | None = None,
) -> GraphFacts:
    """``read_graph`` in a child process, from the version folder's file read again (within
    ``root``, as ``check_inside`` allows): refused unless it holds the bytes the server loads
    (its signature then differs from the one this load recorded, so the next poll tries
    again)."""
    if root is not None:
        check_inside(path, root)
    model_bytes = read_model_again(path, digest, "while it was loaded")
    return read_graph(model_bytes, name, version, digest, card, config)
