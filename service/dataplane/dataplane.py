"""``DataPlane``: what the server answers, whatever the wire (MLServer's ``handlers/dataplane.py``).
It owns the model repository, the metrics, the work pool and the explorer's sessions, built once
from the settings; it takes and returns the typed objects of ``types`` and raises only the
``service.core.errors`` tree. The REST routes, the fast path and gRPC translate their wire only.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager

import numpy as np

from service.core.body_budget import BodyBudget
from service.core.card import TENSOR, ModelCard
from service.core.errors import (
    InvalidCard,
    ModelNotFound,
    ModelNotReady,
    PayloadTooLarge,
    PredictionLogOff,
)
from service.dataplane import build
from service.dataplane.answer_room import answer_room
from service.dataplane.classification import check_classified, classify
from service.dataplane.config_override import (
    ConfigOverride,
    check_load_parameters,
    override_options,
)
from service.dataplane.feedback import Feedback, apply_feedback, names_or_empty
from service.dataplane.feeds import model_feeds
from service.dataplane.kinds import check_image_card, require_image
from service.dataplane.log_settings import LogSettings
from service.dataplane.model_config import ModelConfig, build_model_config
from service.dataplane.monitor import MonitorReport
from service.dataplane.pixels import model_pixels
from service.dataplane.prediction_log import logged_id, open_prediction_log
from service.dataplane.quality_monitor import QualityMonitor
from service.dataplane.response_cache import ResponseCache
from service.dataplane.statistics import collect_statistics
from service.dataplane.trace_settings import TraceSettings
from service.dataplane.types import (
    InferRequest,
    InferResponse,
    ModelLayers,
    ModelMetadata,
    ModelStatus,
    RepositoryEntry,
    ServerMetadata,
    VersionStatus,
)
from service.engine.activations import ActivationSessions, Render, T
from service.engine.leases import lease_scope
from service.engine.metrics import Metrics
from service.engine.named_rows import NamedRows
from service.engine.runtime import ModelRuntime
from service.engine.statistics import VersionStatistics
from service.engine.version_folder import ModelState
from service.settings import Settings

SERVER_NAME = "cifar-serve"
SERVER_VERSION = "0.1.0"
PLATFORM = "onnxruntime_onnx"
LOG_FLUSH_S = 5.0  # at shutdown, the longest the prediction log's writer gets to finish


class DataPlane:
    """The models and what they answer; one per app, shared by REST and gRPC."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.prediction_log = log = open_prediction_log(settings, self.metrics.registry)
        answered = None if log is None else log.record_run  # told by the run that answered
        options = build.runtime_options(settings, self.metrics, answered)
        self.repository = build.model_repository(settings, options)
        self.metrics.track_providers(self.repository.provider_use)
        self.work = build.work_pool(settings)  # where decoding and encoding run, off the loop
        self.decodes_in_batch = build.decodes_in_batch(settings)  # under load (decode_in_batch)
        self.body_budget = BodyBudget(settings.max_body_bytes_in_flight)  # REST's and gRPC's
        self.activation_sessions = ActivationSessions(options, self.work)  # the explorer's
        self.response_cache = ResponseCache(settings.response_cache, self.metrics.registry)
        self.shared_memory = build.shared_memory_registry(settings)  # Triton's system shared memory
        self._watchers: list[asyncio.Task[None]] = []
        self.log_settings = LogSettings(settings.log_level, settings.log_format)  # /v2/logging
        self.trace_settings = TraceSettings()  # /v2/trace/setting: OpenTelemetry, off by default
        names = names_or_empty(lambda name, version: self._class_names(name, version))
        self.monitor = QualityMonitor(
            self.prediction_log,
            self.metrics.registry,
            names,
            settings.drift_threshold,
            settings.thread_scheduling,
        )
        forget = self.response_cache.drop  # WORKERS > 1: what the workers share (workers.py)
        self.workers = build.worker_group(settings, self.repository, forget, self.shared_memory)
        cached = self.response_cache.enabled
        build.triton_metrics(self.metrics, self.repository, self.workers, cached)

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the models (off the loop), then poll the repository and time the loop's lag."""
        settings = self.settings
        asyncio.get_running_loop().set_default_executor(build.background_executor(settings))
        start = self.workers.start_state() if self.workers else ((), {})  # the group's calls
        await asyncio.to_thread(self.repository.load, *start)
        if self.workers is not None:  # before serving: a restarted worker keeps an unload
            await self.workers.start()
            for task in (self.workers.watch(), self.workers.publish_statistics()):
                self._watchers.append(asyncio.create_task(task))
        if settings.poll_interval_s > 0:
            watch = self.repository.watch(settings.poll_interval_s)
            self._watchers.append(asyncio.create_task(watch))
        if settings.loop_lag_interval_s > 0:
            lag = self.metrics.watch_loop_lag(settings.loop_lag_interval_s)
            self._watchers.append(asyncio.create_task(lag))
        if self.prediction_log is not None and settings.monitor_refresh_s > 0:
            window, every = settings.monitor_window_s, settings.monitor_refresh_s
            refresh = self.monitor.watch(self._monitored, window, every)
            self._watchers.append(asyncio.create_task(refresh))

    async def stop(self) -> None:
        """Stop watching and close every session (waits for a poll still loading)."""
        for watcher in self._watchers:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        self._watchers.clear()
        await asyncio.to_thread(self.close)

    def close(self) -> None:
        if self.prediction_log is not None:  # what is queued is written, within a bound
            self.prediction_log.close(LOG_FLUSH_S)
        self.work.close()
        self.trace_settings.close(LOG_FLUSH_S)  # spans still queued, within the same bound
        self.monitor.close()
        self.shared_memory.close()
        self.activation_sessions.close()
        self.repository.close()
        if self.workers is not None:
            self.workers.close()

    # -- health and metadata ------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Loading has finished and some model is ready."""
        return self.repository.ready

    def check_ready(self) -> None:
        """Nothing when ``ready``; else ``ModelNotReady`` saying why."""
        if not self.repository.ready:
            loaded = self.repository.loaded
            raise ModelNotReady("no model is ready" if loaded else "still loading models")

    def model(self, name: str, version: str | int | None = None) -> ModelRuntime:
        """The served runtime a request names: 404 unknown, 503 not ready (leased in a request)."""
        return self.repository.get(name, version)

    @staticmethod
    def server_metadata(extensions: Sequence[str]) -> ServerMetadata:
        """``extensions``: what the protocol at hand supports (REST and gRPC differ)."""
        return ServerMetadata(SERVER_NAME, SERVER_VERSION, list(extensions))

    def model_metadata(self, name: str, version: str | None = None) -> ModelMetadata:
        runtime = self.model(name, version)
        versions = self.repository.versions(name)
        card = runtime.card
        return ModelMetadata(
            name=name,
            versions=[str(e.version) for e in versions if e.state is ModelState.READY],
            platform=PLATFORM,
            inputs=list(card.inputs),
            outputs=list(card.outputs),
            execution_providers=list(runtime.providers),
            class_names=list(card.class_names),
            kind=card.kind,
            batched=runtime.batched,
        )

    def model_config(self, name: str, version: str | None = None) -> ModelConfig:
        """The configuration in force for a version, one value for REST and gRPC alike."""
        entry = self.repository.entry(name, self.model(name, version).version)
        meta, policy = self.model_metadata(name, version), self.repository.policy(name)
        return build_model_config(meta, entry, policy, self.settings, self.response_cache)

    async def statistics(
        self, name: str | None, version: str | None = None
    ) -> list[VersionStatistics]:
        """Triton's statistics: every loaded version, a model's, or one version's (summed over
        the worker processes, theirs at most STATISTICS_INTERVAL_S old)."""
        stats = collect_statistics(self.repository, name, version)
        if self.workers is None:
            return stats
        return await asyncio.to_thread(self.workers.add_others, stats)

    # -- inference ----------------------------------------------------------------------------

    async def infer(self, model: ModelRuntime, request: InferRequest) -> InferResponse:
        """The outputs ``request`` asks for (all when it names none) from ``model`` (a tensor
        model's with room for them: ``answer_room``); those asked in shared memory go there."""
        if request.class_counts:
            check_classified(request.outputs, request.class_counts, model.outputs)
        request = await self.shared_memory.read_inputs(request, self.work)
        requested = [o.name for o in request.outputs]
        timeout_us = request.timeout_us or None
        if model.kind == TENSOR:  # neither cached nor logged: both keep image batches
            feeds = model_feeds(model, request.inputs, requested)
            with answer_room(self.body_budget, model, feeds.rows, request.outputs):
                outputs = await self._run(model, feeds, requested or None, timeout_us)
            return await self._answer(model, request, outputs)
        pixels = model_pixels(model, request.inputs, requested)
        if self.response_cache.enabled(model.name):
            run = functools.partial(self._run, model, pixels, requested or None, timeout_us)
            inline = self.settings.inline_decode_bytes
            cache = self.response_cache
            outputs = await cache.answer(model, pixels, requested, run, self.work, inline)
            if (log := self.prediction_log) is not None:  # no run tells of a cached answer
                log.record(logged_id(request.id), model.name, model.version, pixels, outputs)
        else:
            tag = self._log_tag(request.id)
            outputs = await self._run(model, pixels, requested or None, timeout_us, tag)
        return await self._answer(model, request, outputs)

    async def _answer(
        self, model: ModelRuntime, request: InferRequest, outputs: dict[str, np.ndarray]
    ) -> InferResponse:
        """The response: classified where asked, written to shared memory where asked."""
        if request.class_counts:
            labels = model.card.class_names
            outputs = await classify(self.work, outputs, request.class_counts, labels)
        written = await self.shared_memory.write_outputs(request.outputs, outputs, self.work)
        return InferResponse(model.name, str(model.version), request.id, outputs, written)

    async def predict(
        self,
        model: ModelRuntime,
        pixels: np.ndarray,
        outputs: Sequence[str] | None = None,
        timeout_us: int | None = None,
    ) -> dict[str, np.ndarray]:
        """Run one checked image batch and record it in the prediction log. Still queued after
        ``timeout_us`` (None: REQUEST_TIMEOUT_US; 0: no limit), it fails unrun."""
        return await self._run(model, pixels, outputs, timeout_us, self._log_tag(None))

    async def _run(
        self,
        model: ModelRuntime,
        pixels: np.ndarray | NamedRows,
        outputs: Sequence[str] | None = None,
        timeout_us: int | None = None,
        log_tag: str | None = None,
    ) -> dict[str, np.ndarray]:
        """The single place a request meets a model (an image batch, or named inputs); with a
        ``log_tag``, the run that answers it records it in the prediction log under that id."""
        limit = model.options.max_images_per_request  # a load's config override may lower it
        if len(pixels) > limit:  # images, or rows of a tensor model's inputs
            raise PayloadTooLarge(f"a batch of {len(pixels)}, more than the limit of {limit}")
        timeout_us = self.settings.request_timeout_us if timeout_us is None else timeout_us
        return await model.infer(pixels, outputs, timeout_us / 1e6, log_tag)

    def _log_tag(self, id: str | None) -> str | None:
        """The id a run records the answer under (``logged_id``); None with the log off."""
        return None if self.prediction_log is None else logged_id(id)

    async def feedback(self, items: Sequence[Feedback], by: str) -> int:
        """Label answered images as given ``by`` ADMIN or OPEN (404 unknown id, 422 bad label)."""
        log = self.prediction_log
        if log is None:
            raise PredictionLogOff("the prediction log is off (PREDICTION_LOG=false)")
        names = names_or_empty(self._class_names)
        return await apply_feedback(log, items, names, by, self.monitor.on_its_pool)

    async def monitor_report(
        self, name: str, version: str | None, window_s: float | None
    ) -> MonitorReport:
        """Live quality of a version (or the served one) over the last ``window_s`` seconds
        (None: MONITOR_WINDOW_S): 404 unknown, 503 with the prediction log off."""
        entry = self.repository.entry(name, version)
        card = entry.card
        if card is None:  # never loaded (the version policy skips it) or its card is broken
            reason = f" ({entry.reason})" if entry.reason else ""
            raise ModelNotFound(f"model {name!r} version {entry.version} is not served{reason}")
        check_image_card(card, "the quality monitor (the prediction log keeps classifications)")
        window = self.settings.monitor_window_s if window_s is None else window_s
        return await self.monitor.report(name, entry.version, card, window)

    def _monitored(self) -> list[tuple[str, int, ModelCard]]:
        """The loaded versions, whose quality gauges the monitor keeps current."""
        repository = self.repository
        return [
            (name, entry.version, entry.card)
            for name in repository.names()
            for entry in repository.versions(name)
            if entry.runtime is not None and entry.card is not None
        ]

    def _class_names(self, name: str, version: int) -> list[str]:
        card = self.repository.entry(name, version).card or self.model(name).card
        return list(card.class_names)

    # -- inspection -----------------------------------------------------------------------------

    def models(self) -> list[ModelStatus]:
        """Every model, the version it serves and all its versions."""
        repository = self.repository
        return [
            ModelStatus(
                name,
                VersionStatus.of(repository.entry(name)),
                [VersionStatus.of(v) for v in repository.versions(name)],
            )
            for name in repository.names()
        ]

    def version_status(self, name: str, version: str | None = None) -> VersionStatus:
        """The version a request names (or the served one), whatever its state."""
        return VersionStatus.of(self.repository.entry(name, version))

    def layers(self, name: str) -> ModelLayers:
        """The served version's layer table; ``InvalidCard`` when its graph could not be read."""
        runtime = require_image(self.model(name), "the layer table")  # 404, 503 unavailable
        # The entry of that very version: a reload since ``model`` may serve another one by now.
        report = self.repository.entry(name, runtime.version).layers
        if report is None or report.table is None:
            raise InvalidCard(report.error if report else "no layer table for this model")
        return ModelLayers(name, runtime.version, report.table, report)

    async def activations(
        self, model: ModelRuntime, image: np.ndarray, names: Sequence[str], render: Render[T]
    ) -> T:
        """The feature maps of ``names`` (none: every conv and pool layer) for one image, as
        ``render`` makes them (in the explorer's lane, ``ActivationSessions.lane``)."""
        entry, sessions = self.repository.entry(model.name, model.version), self.activation_sessions
        return await sessions.feature_maps(
            model.card, entry.path, entry.layers, image, names, render
        )

    # -- the model repository extension ---------------------------------------------------------

    def repository_index(self, ready: bool) -> list[RepositoryEntry]:
        """Every version on disk, or the READY ones."""
        rows = [RepositoryEntry(**row) for row in self.repository.index()]
        return [r for r in rows if r.state == ModelState.READY.value] if ready else rows

    async def load_model(
        self, name: str, parameter_names: Iterable[str], override: ConfigOverride | None = None
    ) -> None:
        """Load (or reload) a model under its version policy; failed versions are retried. With
        a config ``override`` its batching is that until a load without one; a bad one is a 400
        before anything changes."""
        check_load_parameters(parameter_names)
        options = (
            None if override is None else override_options(name, override, self.repository.options)
        )

        async def load() -> None:
            self.response_cache.drop(name)  # whatever versions it serves next, start afresh
            try:
                await asyncio.to_thread(self.repository.load_model, name, options)
            finally:
                self.response_cache.drop(name)  # and what was stored while it loaded

        workers = self.workers
        await (load() if workers is None else workers.change("load", name, load, override))

    async def unload_model(self, name: str) -> None:
        """Stop serving every version of a model (requests in flight finish) until a load."""

        async def unload() -> None:
            self.response_cache.drop(name)
            await asyncio.to_thread(self.repository.unload_model, name)

        await (unload() if self.workers is None else self.workers.change("unload", name, unload))

    # -- system shared memory: with WORKERS > 1 every worker's before the answer --------------

    async def register_region(self, name: str, key: str, offset: int, byte_size: int) -> None:
        if self.workers is None:  # a 400 if the object cannot be opened
            return self.shared_memory.register(name, key, offset, byte_size)
        await self.workers.register_region(name, key, offset, byte_size)

    async def unregister_region(self, name: str | None = None) -> None:
        """``name``; None or "": every region."""
        if self.workers is None:
            return self.shared_memory.unregister(name)
        await self.workers.unregister_region(name)


def request_scope() -> AbstractContextManager[None]:
    """One request's hold on the data plane: the model versions it takes stay open until the
    scope ends, even if newer ones are swapped in meanwhile. Each adapter enters it once per
    request, around everything it answers."""
    return lease_scope()
