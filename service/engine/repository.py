"""The model repository: scan ``<root>/<name>/<version>/``, check each card against its graph, load.

Version policy: the highest positive-integer version folder of each model is served; older ones
are listed as ``UNLOADED``. Anything else in the tree (hidden ``.tmp-*`` folders of an atomic
publish, stray files) is ignored. A version that fails its checks is ``UNAVAILABLE`` with the
reason, and every other model is still served.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from service.core.card import CARD_FILE, MODEL_FILE, ModelCard, TensorSpec, read_card
from service.core.errors import InvalidCard, ModelNotFound, ModelNotReady, ServingError
from service.engine.layers import LayerReport, read_layers
from service.engine.runtime import ModelRuntime, RuntimeOptions, resolve_providers

log = logging.getLogger(__name__)

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
PROBABILITIES = "probabilities"


class ModelState(StrEnum):
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"  # found but failed its checks; ``reason`` says why
    UNLOADED = "UNLOADED"  # on disk, not served under the version policy


@dataclass
class ModelVersion:
    """What the repository knows about one version folder."""

    name: str
    version: int
    path: Path
    state: ModelState
    reason: str = ""
    card: ModelCard | None = None
    runtime: ModelRuntime | None = None
    layers: LayerReport | None = None


@dataclass
class _Model:
    name: str
    versions: dict[int, ModelVersion] = field(default_factory=dict)
    served: int | None = None  # the version the policy picked, loaded or not


def parse_version(version: str | int | None) -> int | None:
    """A version from a URL: a positive integer, or None for "the served one"."""
    if version is None or version == "":
        return None
    if isinstance(version, int):
        number = version
    elif version.isdigit() and len(version) <= 9:
        number = int(version)
    else:
        raise ModelNotFound(f"version {version!r} is not a positive integer")
    if number < 1:
        raise ModelNotFound(f"version {version!r} is not a positive integer")
    return number


def _check_tensors(kind: str, card: list[TensorSpec], graph: list[TensorSpec]) -> None:
    """Names, datatypes and shapes of the card must be those of the graph (-1: dynamic axis)."""
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
            (c == -1) != (g == -1) or c != g for c, g in zip(spec.shape, actual.shape, strict=True)
        ):
            raise InvalidCard(
                f"{kind[:-1]} {name!r}: card shape {spec.shape} differs from graph {actual.shape}"
            )


def _check_serving_contract(card: ModelCard) -> None:
    """What this service needs to classify images with a model."""
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


def load_version(
    name: str, version: int, path: Path, options: RuntimeOptions
) -> tuple[ModelCard, ModelRuntime, bytes]:
    """Read, check and load one version folder; raises ``ServingError`` with the reason."""
    card = read_card(path)
    if card.name != name or card.version != version:
        raise InvalidCard(
            f"card names {card.name!r} version {card.version}, but it lies in {name}/{version}"
        )
    _check_serving_contract(card)
    try:
        model_bytes = (path / MODEL_FILE).read_bytes()
    except FileNotFoundError:
        raise InvalidCard(f"no {MODEL_FILE} beside the card") from None
    except OSError as exc:
        raise InvalidCard(f"unreadable {MODEL_FILE}: {exc.strerror}") from None
    # The bytes are hashed as read, so the check covers exactly what onnxruntime loads.
    digest = hashlib.sha256(model_bytes).hexdigest()
    if digest != card.sha256.lower():
        raise InvalidCard(f"sha256 of {MODEL_FILE} is {digest}, the card says {card.sha256}")
    runtime = ModelRuntime(card, model_bytes, options)
    try:
        _check_tensors("inputs", card.inputs, runtime.inputs)
        _check_tensors("outputs", card.outputs, runtime.outputs)
        if options.warm_up:
            runtime.warm_up()
    except BaseException:
        runtime.close()
        raise
    return card, runtime, model_bytes


class ModelRepository:
    """Every model under ``root``: its versions, their states, and the loaded runtimes."""

    def __init__(self, root: Path, options: RuntimeOptions) -> None:
        self.root = root
        self.options = options
        self._models: dict[str, _Model] = {}
        self.loaded = False

    def load(self) -> None:
        """Scan and load (blocking: call it off the event loop)."""
        usable, missing = resolve_providers(self.options.providers)
        if missing:
            log.warning(
                "execution provider(s) %s not available here; using %s",
                ", ".join(missing),
                ", ".join(usable),
            )
        models: dict[str, _Model] = {}
        if not self.root.is_dir():
            log.warning("model repository %s is not a folder; serving no models", self.root)
        for name, versions in self._scan():
            model = models[name] = _Model(name)
            for version, path in versions.items():
                model.versions[version] = ModelVersion(name, version, path, ModelState.UNLOADED)
            if versions:
                model.served = max(versions)
                self._load_served(model)
        self._models = models
        self.loaded = True

    def _scan(self) -> Iterator[tuple[str, dict[int, Path]]]:
        if not self.root.is_dir():
            return
        for model_dir in sorted(self.root.iterdir()):
            if not model_dir.is_dir() or not NAME_PATTERN.match(model_dir.name):
                continue
            versions = {
                int(d.name): d
                for d in model_dir.iterdir()
                if d.is_dir() and d.name.isdigit() and int(d.name) > 0
            }
            yield model_dir.name, versions

    def _load_served(self, model: _Model) -> None:
        assert model.served is not None
        entry = model.versions[model.served]
        try:
            card, runtime, model_bytes = load_version(
                model.name, entry.version, entry.path, self.options
            )
        except ServingError as exc:
            entry.state, entry.reason = ModelState.UNAVAILABLE, exc.message
            log.error("%s v%d not served: %s", model.name, entry.version, exc.message)
            # The card may still be readable, so the index can show what was published.
            try:
                entry.card = read_card(entry.path)
            except ServingError:
                entry.card = None
            return
        entry.card, entry.runtime, entry.state = card, runtime, ModelState.READY
        entry.layers = read_layers(model_bytes, card)
        log.info(
            "%s v%d ready on %s (%s)",
            model.name,
            entry.version,
            ", ".join(runtime.providers),
            entry.path / CARD_FILE,
        )

    # -- lookups -------------------------------------------------------------------------

    def names(self) -> list[str]:
        return sorted(self._models)

    def versions(self, name: str) -> list[ModelVersion]:
        return [self._model(name).versions[v] for v in sorted(self._model(name).versions)]

    def _model(self, name: str) -> _Model:
        model = self._models.get(name)
        if model is None:
            known = ", ".join(sorted(self._models)) or "none"
            raise ModelNotFound(f"unknown model {name!r} (served: {known})")
        return model

    def entry(self, name: str, version: str | int | None = None) -> ModelVersion:
        """The version a request names (or the served one), whatever its state."""
        model = self._model(name)
        number = parse_version(version)
        if number is None:
            if model.served is None:
                raise ModelNotFound(f"model {name!r} has no versions")
            number = model.served
        entry = model.versions.get(number)
        if entry is None:
            raise ModelNotFound(
                f"model {name!r} has no version {number} (versions: "
                f"{', '.join(str(v) for v in sorted(model.versions)) or 'none'})"
            )
        return entry

    def get(self, name: str, version: str | int | None = None) -> ModelRuntime:
        """The loaded runtime for a request: 404 unknown or not served, 503 failed its checks."""
        entry = self.entry(name, version)
        if entry.runtime is None:
            if entry.state is ModelState.UNLOADED:
                raise ModelNotFound(
                    f"model {name!r} version {entry.version} is not served "
                    f"(the served version is {self._model(name).served})"
                )
            raise ModelNotReady(
                f"model {name!r} version {entry.version} is unavailable: {entry.reason}"
            )
        return entry.runtime

    def served(self) -> list[ModelVersion]:
        """The version each model serves (ready or not)."""
        return [m.versions[m.served] for m in self._models.values() if m.served is not None]

    @property
    def ready(self) -> bool:
        """Loading has finished and at least one model is ready."""
        return self.loaded and any(e.state is ModelState.READY for e in self.served())

    def index(self) -> list[dict[str, Any]]:
        """Every version on disk with its state, for listings."""
        rows = []
        for name in self.names():
            for entry in self.versions(name):
                rows.append(
                    {
                        "name": name,
                        "version": str(entry.version),
                        "state": entry.state.value,
                        "reason": entry.reason,
                    }
                )
        return rows

    def close(self) -> None:
        for model in self._models.values():
            for entry in model.versions.values():
                if entry.runtime is not None:
                    entry.runtime.close()
                    entry.runtime = None
        self._models = {}
        self.loaded = False
