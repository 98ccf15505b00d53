"""One version folder (``<root>/<name>/<version>/``): what the repository records of it, the
signature of its files on disk, and loading it into a runtime (or the reason it cannot be
served), checked against the serving contract (``served_graph``)."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path, PurePosixPath

from service.core.card import CARD_FILE, MODEL_FILE, ModelCard, read_card
from service.core.errors import InvalidCard, InvalidConfig, ServingError
from service.engine.batching_options import BATCHING_FIELDS
from service.engine.config_card import check_card_and_config
from service.engine.external_data import read_external
from service.engine.large_graphs import ChildFailed, in_child, is_large
from service.engine.layers import LayerReport
from service.engine.providers import provider_problem
from service.engine.runtime import ModelRuntime, RuntimeOptions
from service.engine.served_graph import (
    check_inside,
    check_tensors,
    read_graph,
    read_graph_file,
    read_model,
)
from service.engine.triton_config import CONFIG_PBTXT, TritonConfig

log = logging.getLogger(__name__)


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
    card, runtime, loaded, _ = _load_version(name, version, path, options, root, config)
    return card, runtime, loaded.model


def _load_version(
    name: str,
    version: int,
    path: Path,
    options: RuntimeOptions,
    root: Path | None,
    config: TritonConfig | InvalidConfig | None,
    data_folder: Path | None = None,
) -> tuple[ModelCard, ModelRuntime, Loaded, LayerReport | None]:
    """``data_folder``: where the graph's external data files lie, if not in ``path``."""
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
    model_bytes = read_model(path)
    # The bytes are hashed as read, so the check covers exactly what onnxruntime loads.
    digest = hashlib.sha256(model_bytes).hexdigest()
    if card is not None and digest != card.sha256.lower():
        raise InvalidCard(f"sha256 of {MODEL_FILE} is {digest}, the card says {card.sha256}")
    if card is not None and config is not None:
        check_card_and_config(card, config)
    if is_large(model_bytes):
        args = (path, digest, name, version, card, config, root)
        card, layers, names = in_child(options.thread_scheduling, read_graph_file, *args)
    else:
        card, layers, names = read_graph(model_bytes, name, version, digest, card, config)
    folder = data_folder or path
    runtime = ModelRuntime(card, model_bytes, options, folder, read_external(folder, names))
    try:
        check_tensors("inputs", card.inputs, runtime.inputs, fixes_dynamic=not carded)
        check_tensors("outputs", card.outputs, runtime.outputs, fixes_dynamic=not carded)
        if options.warm_up:
            runtime.warm_up()
    except BaseException:
        runtime.close()
        raise
    files = config.files if config is not None else ()
    batching = json.dumps({f: getattr(options, f) for f in BATCHING_FIELDS}, sort_keys=True)
    card_text = card.to_json() if carded else None
    return card, runtime, Loaded(model_bytes, digest, card_text, files, batching), layers


def load_entry(
    entry: ModelVersion,
    signature: Signature,
    options: RuntimeOptions,
    root: Path | None,
    unavailable_providers: Collection[str] = (),
    config: TritonConfig | InvalidConfig | None = None,
    keep: Callable[[str, int, Loaded], None] | None = None,
    data_folder: Path | None = None,
) -> ModelVersion:
    """``entry`` after an attempt to load its folder: READY with its runtime, or UNAVAILABLE
    with the reason (a served version whose files changed and now fail keeps its runtime).
    What loads is given to ``keep`` (a worker group's copies, ``last_good``). The graph's
    external data files are read from its folder, or from ``data_folder`` (a copy's version)."""
    try:
        card, runtime, loaded, layers = _load_version(
            entry.name, entry.version, entry.path, options, root, config, data_folder
        )
    except ChildFailed as exc:  # not the files' fault: recorded unseen, so tried again
        return _failed(entry, None, exc)
    except Exception as exc:
        return _failed(entry, signature, exc)
    if layers is not None and layers.table is None:  # the model is served all the same
        log.warning("%s v%d: %s", entry.name, entry.version, layers.error)
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
        layers=layers,
        signature=signature,
        config=file,
    )


def _failed(entry: ModelVersion, signature: Signature | None, exc: Exception) -> ModelVersion:
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
