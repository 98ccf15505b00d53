"""One version folder (``<root>/<name>/<version>/``): what the repository records of it, the
signature of its files on disk, the serving contract its card and graph must meet, and loading it
into a runtime (or the reason it cannot be served)."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path, PurePosixPath

from service.core.card import (
    CARD_FILE,
    IMAGE_CLASSIFIER,
    MODEL_FILE,
    TENSOR,
    ModelCard,
    TensorSpec,
    read_card,
)
from service.core.errors import InvalidCard, InvalidConfig, ServingError
from service.core.limits import MAX_TENSOR_NAME_CHARS
from service.core.regular_files import MAX_MODEL_BYTES, read_regular
from service.engine.batching_options import BATCHING_FIELDS
from service.engine.config_card import check_card_and_config, config_card
from service.engine.layers import LayerReport, read_layers
from service.engine.providers import provider_problem
from service.engine.runtime import ModelRuntime, RuntimeOptions
from service.engine.triton_config import CONFIG_PBTXT, TritonConfig

log = logging.getLogger(__name__)

PROBABILITIES = "probabilities"
NHWC = "FORMAT_NHWC"  # config.pbtxt's image layout

# (size, mtime_ns, inode) of model.onnx and card.json; None for a missing file.
Signature = tuple[tuple[int, int, int] | None, ...]


class ModelState(StrEnum):
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"  # found but failed its checks; ``reason`` says why
    UNLOADED = "UNLOADED"  # on disk, not served under the version policy (or unloaded)


@dataclass
class ModelVersion:
    """What the repository knows about one version folder (replaced, never changed, once shown)."""

    name: str
    version: int
    path: Path
    state: ModelState
    reason: str = ""
    card: ModelCard | None = None
    runtime: ModelRuntime | None = None
    layers: LayerReport | None = None
    signature: Signature | None = None  # of the files the last load attempt read
    config: TritonConfig | None = None  # the model folder's config.pbtxt it was loaded with


BATCHING_FILE = "batching.json"  # in a worker group's copy, beside the model's folder


@dataclass(frozen=True)
class Loaded:
    """What one version was loaded from: the graph's bytes, its card's text (None: served
    from config.pbtxt or the graph alone) and the model folder's config files as read."""

    model: bytes
    digest: str  # the model's sha256, as checked
    card: str | None
    config_files: tuple[tuple[str, bytes], ...] = ()
    batching: str = "{}"  # JSON of the runtime's ``BATCHING_FIELDS``: what it was built with

    def key(self) -> str:
        digest = hashlib.sha256(self.digest.encode("ascii"))
        digest.update(b"\0batching\0" + self.batching.encode("ascii"))
        digest.update(b"\0card\0" + (self.card or "").encode("utf-8"))
        for name, data in self.config_files:
            digest.update(b"\0" + name.encode("utf-8") + b"\0" + hashlib.sha256(data).digest())
        return digest.hexdigest()[:32]

    def files(self, name: str, version: int) -> dict[PurePosixPath, bytes]:
        """Each file's path inside the copy's folder (a repository of one model), and beside
        it the batching the runtime was built with."""
        model_dir = PurePosixPath(name)
        files = {model_dir / str(version) / MODEL_FILE: self.model}
        files[PurePosixPath(BATCHING_FILE)] = self.batching.encode("ascii")
        if self.card is not None:
            files[model_dir / str(version) / CARD_FILE] = self.card.encode("utf-8")
        for file_name, data in self.config_files:
            files[model_dir / file_name] = data
        return files


def files_signature(version_dir: Path) -> Signature:
    """What changes when a version's files are replaced or rewritten (cheap: two ``stat`` calls)."""
    signature: list[tuple[int, int, int] | None] = []
    for name in (MODEL_FILE, CARD_FILE):
        try:
            st = (version_dir / name).stat()
        except OSError:
            signature.append(None)
        else:
            signature.append((st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(signature)


def _check_tensors(
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


def _read_model(path: Path) -> bytes:
    try:
        return read_regular(path / MODEL_FILE, MAX_MODEL_BYTES)
    except FileNotFoundError:
        raise InvalidCard(f"no {MODEL_FILE} in the version folder") from None
    except OSError as exc:
        raise InvalidCard(f"unreadable {MODEL_FILE}: {exc.strerror}") from None


def _has_card(path: Path) -> bool:
    return (path / CARD_FILE).exists() or (path / CARD_FILE).is_symlink()


def load_version(
    name: str,
    version: int,
    path: Path,
    options: RuntimeOptions,
    root: Path | None = None,
    config: TritonConfig | InvalidConfig | None = None,
) -> tuple[ModelCard, ModelRuntime, bytes]:
    """Read, check and load one version folder; raises ``ServingError`` with the reason.
    With ``root``, nothing that resolves outside it is read (``check_inside``). ``config``: the
    model folder's ``config.pbtxt`` (or why it cannot be used); a version without a card is
    served from it, or from its graph alone when there is none."""
    card, runtime, loaded = _load_version(name, version, path, options, root, config)
    return card, runtime, loaded.model


def _load_version(
    name: str,
    version: int,
    path: Path,
    options: RuntimeOptions,
    root: Path | None,
    config: TritonConfig | InvalidConfig | None,
) -> tuple[ModelCard, ModelRuntime, Loaded]:
    if isinstance(config, InvalidConfig):
        raise config
    if root is not None:
        check_inside(path, root)
    carded = _has_card(path)
    card = read_card(path) if carded else None
    if card is not None and (card.name != name or card.version != version):
        raise InvalidCard(
            f"card names {card.name!r} version {card.version}, but it lies in {name}/{version}"
        )
    model_bytes = _read_model(path)
    # The bytes are hashed as read, so the check covers exactly what onnxruntime loads.
    digest = hashlib.sha256(model_bytes).hexdigest()
    if card is None:
        card = _image_or_tensor(config_card(name, version, digest, config, model_bytes), config)
    elif digest != card.sha256.lower():
        raise InvalidCard(f"sha256 of {MODEL_FILE} is {digest}, the card says {card.sha256}")
    elif config is not None:
        check_card_and_config(card, config)
    check_serving_contract(card)
    runtime = ModelRuntime(card, model_bytes, options)
    try:
        _check_tensors("inputs", card.inputs, runtime.inputs, fixes_dynamic=not carded)
        _check_tensors("outputs", card.outputs, runtime.outputs, fixes_dynamic=not carded)
        if options.warm_up:
            runtime.warm_up()
    except BaseException:
        runtime.close()
        raise
    files = config.files if config is not None else ()
    batching = json.dumps({f: getattr(options, f) for f in BATCHING_FIELDS}, sort_keys=True)
    card_text = card.to_json() if carded else None
    return card, runtime, Loaded(model_bytes, digest, card_text, files, batching)


def load_entry(
    entry: ModelVersion,
    signature: Signature,
    options: RuntimeOptions,
    root: Path | None,
    unavailable_providers: Collection[str] = (),
    config: TritonConfig | InvalidConfig | None = None,
    keep: Callable[[str, int, Loaded], None] | None = None,
) -> ModelVersion:
    """``entry`` after an attempt to load its folder: READY with its runtime, or UNAVAILABLE
    with the reason (a served version whose files changed and now fail keeps its runtime).
    What loads is given to ``keep`` (a worker group's copies, ``last_good``)."""
    try:
        card, runtime, loaded = _load_version(
            entry.name, entry.version, entry.path, options, root, config
        )
    except Exception as exc:
        return _failed(entry, signature, exc)
    model_bytes = loaded.model
    if keep is not None:
        keep(entry.name, entry.version, loaded)
    described = entry.path / CARD_FILE
    if not _has_card(entry.path):
        described = entry.path.parent / CONFIG_PBTXT if config else entry.path / MODEL_FILE
    log.info(
        "%s v%d ready on %s (%s)",
        entry.name,
        entry.version,
        ", ".join(runtime.providers),
        described,
    )
    file = config if isinstance(config, TritonConfig) else None
    for note in file.notes if file else ():
        log.info("%s v%d: %s", entry.name, entry.version, note)
    _warn_on_fallback(entry, runtime, unavailable_providers)
    return replace(
        entry,
        state=ModelState.READY,
        reason="",
        card=card,
        runtime=runtime,
        layers=None if card.kind == TENSOR else read_layers(model_bytes, card),
        signature=signature,
        config=file,
    )


def _failed(entry: ModelVersion, signature: Signature, exc: Exception) -> ModelVersion:
    message = exc.message if isinstance(exc, ServingError) else f"failed to load: {exc!r}"
    if not isinstance(exc, ServingError):
        log.exception("%s v%d failed to load", entry.name, entry.version)
    if entry.runtime is not None:  # files changed under a served version
        log.error(
            "%s v%d changed on disk and fails (%s); still serving what was loaded",
            entry.name,
            entry.version,
            message,
        )
        reason = f"changed on disk and the new files fail, serving the previous: {message}"
        return replace(entry, reason=reason, signature=signature)
    log.error("%s v%d not served: %s", entry.name, entry.version, message)
    # The card may still be readable, so the index can show what was published.
    try:
        card_read: ModelCard | None = read_card(entry.path)
    except ServingError:
        card_read = None
    return replace(
        entry,
        state=ModelState.UNAVAILABLE,
        reason=message,
        card=card_read,
        runtime=None,
        layers=None,
        signature=signature,
        config=None,
    )


def _warn_on_fallback(
    entry: ModelVersion, runtime: ModelRuntime, unavailable_providers: Collection[str]
) -> None:
    failed = [p for p in runtime.missing_providers if p not in unavailable_providers]
    if failed:
        # Built in, yet the session did not get it: onnxruntime falls back to the CPU without
        # raising, so say so where operators look (/v2/models/{name} and /metrics show it
        # too; REQUIRE_PROVIDERS=true makes the version UNAVAILABLE instead). Providers not
        # in this onnxruntime build at all were reported once at start-up.
        log.warning(
            "%s v%d runs on %s, not on the requested %s: %s",
            entry.name,
            entry.version,
            ", ".join(runtime.providers),
            ", ".join(failed),
            "; ".join(provider_problem(p) for p in failed),
        )


def stale(entry: ModelVersion, signature: Signature, options: RuntimeOptions) -> bool:
    """Whether a wanted version needs a load: not ready, its files changed, or other options
    (a load's config override) than its runtime was built with."""
    runtime = entry.runtime
    in_force = runtime.options if runtime is not None else None
    return (
        entry.state is not ModelState.READY or entry.signature != signature or in_force != options
    )
