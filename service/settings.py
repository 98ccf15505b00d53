"""Service settings: one class, read from the environment (or a ``.env`` file) once in ``__main__``.

Every field maps to an upper-case environment variable of the same name, e.g. ``MODEL_REPOSITORY``.
"""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from service.core.body_budget import least_budget
from service.core.errors import ServingError
from service.core.processes import auto_workers
from service.core.timeouts import MAX_TIMEOUT_US
from service.core.version_policy import VersionPolicy
from service.settings_batching import BatchingSettings
from service.settings_connections import ConnectionSettings
from service.settings_quality import QualitySettings

GraphOptimization = Literal["disable", "basic", "extended", "all"]


class Settings(QualitySettings, BatchingSettings, ConnectionSettings):
    """Process-wide settings; per-model facts (inputs, labels, preprocessing) live in the card."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", protected_namespaces=()
    )

    model_repository: Path = Field(
        default=Path("models"),
        description="Folder holding <name>/<version>/model.onnx and card.json, or a Triton "
        "repository: <name>/config.pbtxt and <name>/<version>/model.onnx.",
    )
    host: str = Field(default="127.0.0.1", description="Interface uvicorn binds to.")
    port: int = Field(
        default=8000, ge=0, le=65535, description="TCP port uvicorn binds to (0: any free)."
    )
    grpc_port: int = Field(
        default=8001,
        ge=-1,
        le=65535,
        description=(
            "TCP port of the Open Inference Protocol gRPC service, on HOST beside REST "
            "(0: any free, -1: no gRPC). Used by python -m service."
        ),
    )
    providers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"],
        description=(
            "onnxruntime execution providers in order of preference, comma-separated in the "
            "environment. Missing ones are skipped with one log line; CPU is the last resort."
        ),
    )
    require_providers: bool = Field(
        default=False,
        description=(
            "Refuse to serve a model version whose session lacks a provider PROVIDERS names "
            "(it is UNAVAILABLE with the reason) instead of falling back to the CPU with a "
            "warning: for GPU deployments that must not run on the CPU."
        ),
    )
    intra_op_threads: int = Field(
        default=0,
        ge=0,
        description="onnxruntime threads inside one run (0: cores divided by WORKERS).",
    )
    inter_op_threads: int = Field(
        default=1,
        ge=0,
        description="onnxruntime threads across independent graph branches (0: default).",
    )
    ort_allow_spinning: bool = Field(
        default=False,
        description=(
            "Let onnxruntime's idle pool threads spin for the next run. Off by default: on 2 "
            "cores spinning took CPU from the HTTP loop (docs/benchmarks.md)."
        ),
    )
    workers: int = Field(
        default="auto",
        validate_default=True,
        ge=1,
        le=64,
        description=(
            "Server processes sharing the REST and gRPC ports (uvicorn workers, restarted when "
            "one dies); they answer as one server. auto (the default: measured faster on 2 "
            "cores): one per usable core, as memory allows for the models; 1 in a container "
            "or pod, whose CPU quota it cannot see (docs/scaling.md#workers)."
        ),
    )
    workers_dir: Path | None = Field(
        default=None,
        description=(
            "Folder the worker processes share (repository calls, shared memory regions, acks, "
            "statistics); python -m service makes one for WORKERS > 1. Unset: a lone process."
        ),
    )
    graph_optimization_level: GraphOptimization = Field(
        default="all",
        description="onnxruntime graph optimizations: disable, basic, extended or all.",
    )
    warm_up: bool = Field(
        default=True, description="Run warm-up batches through each version before it is READY."
    )
    warm_up_batch_sizes: Annotated[list[Annotated[int, Field(ge=1, le=4096)]], NoDecode] = Field(
        default=[1], description="Warm-up runs, one per batch size listed (Triton's model_warmup)."
    )
    max_images_per_request: int = Field(
        default=1024,
        ge=1,
        description="Most images (tensor rows) one request may carry; more is a 413.",
    )
    max_request_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024,
        description="Largest request body in bytes; checked before the body is read (413).",
    )
    max_body_bytes_in_flight: int = Field(
        default=256 * 1024 * 1024,
        ge=0,
        description=(
            "Most bytes of request bodies one process holds at once, counted as they arrive "
            "until the answer is sent; past it 503 with Retry-After. Bodies over 1 MiB get all "
            "but an eighth of it, kept for small ones (0: no limit)."
        ),
    )
    max_image_pixels: int = Field(
        default=16_000_000,
        ge=1,
        description="Largest decoded image (width x height) accepted from an uploaded file (422).",
    )
    max_request_pixels: int = Field(
        default=64_000_000,
        ge=1,
        description="Most pixels one request's images decode to, summed (413; docs/serving.md).",
    )
    work_threads: int = Field(
        default=0,
        ge=0,
        description="Threads decoding bodies and images off the loop (0: cores per WORKERS).",
    )
    max_waiting_work: int = Field(
        default=256,
        ge=0,
        description="Decoding jobs queued behind WORK_THREADS before requests get 503.",
    )
    inline_decode_bytes: int = Field(
        default=131_072,
        ge=0,
        description="Bodies and files up to this size are decoded on the loop (docs/serving.md).",
    )
    process_decode_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=0,
        description=(
            "JSON bodies (v2 infer, :predict, the explorer) from this size are decoded in a child "
            "process, whose parse cannot hold the event loop's interpreter (0: on the work "
            "pool's threads)."
        ),
    )
    loop_lag_interval_s: float = Field(
        default=0.1,
        ge=0,
        description="How often event_loop_lag_seconds samples how late a timer fires (0: never).",
    )
    default_top_k: int = Field(
        default=5,
        ge=1,
        description="Classes returned per image by the v1 endpoints unless top_k is given.",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        default="info", description="Log level of the service and uvicorn."
    )
    log_format: Literal["text", "json"] = Field(
        default="text",
        description=(
            "Log lines as text or as JSON objects (time, level, logger, request_id, message); "
            "both carry the request id, neither ever holds a request body."
        ),
    )
    shutdown_timeout_s: float = Field(
        default=10.0,
        ge=0,
        description="On SIGTERM, time requests in flight (REST and gRPC) get to finish.",
    )

    request_timeout_us: int = Field(
        default=0,
        ge=0,
        le=MAX_TIMEOUT_US,
        description="Microseconds a request may wait queued before it fails unrun, as a "
        "request's own timeout parameter (Triton's) does; 0: no limit.",
    )
    response_cache: str = Field(
        default="",
        description="Models whose answers are cached (Triton's response cache), comma-separated, "
        "each NAME or NAME=BYTES (its memory budget, default 64 MiB); empty: none.",
    )
    gc_gen0_threshold: int = Field(
        default=50_000,
        ge=0,
        description="Gen-0 gc threshold after gc.freeze() (0: Python's; docs/benchmarks.md).",
    )
    poll_interval_s: float = Field(
        default=2.0,
        ge=0,
        description=(
            "Seconds between scans of the model repository for new, changed or removed versions "
            "(0: load once at start-up)."
        ),
    )
    version_policy: str = Field(
        default="latest",
        description=(
            "Versions served of a model without its own config.json: latest, latest:N, all or "
            "specific:V1,V2 (Triton's version policies)."
        ),
    )
    admin_token: SecretStr | None = Field(
        default=None,
        description=(
            "Bearer token that the repository API (REST /v2/repository/..., gRPC Repository*) "
            "requires. Without it (and without ADMIN_TOKEN_FILE) that API is refused, 403, "
            "except for ADMIN_LOOPBACK's local clients."
        ),
    )
    admin_token_file: Path | None = Field(
        default=None,
        description=(
            "A file whose contents are the admin token (container secrets; make serve writes "
            ".admin-token), read once at start-up, surrounding whitespace dropped. Not together "
            "with ADMIN_TOKEN."
        ),
    )
    admin_loopback: bool = Field(
        default=False,
        description=(
            "Local development only: the repository API also answers, without the token, peers "
            "at 127.0.0.1 or ::1 whose requests carry no forwarding headers and, over REST, name "
            "a loopback host (docs/reliability.md)."
        ),
    )
    shared_memory_regions: int = Field(
        default=64, ge=0, description="Most shared memory regions registered at once; 0: off."
    )
    trusted_proxies: Annotated[list[IPv4Network | IPv6Network], NoDecode] = Field(
        default_factory=list,
        description=(
            "Reverse proxies whose X-Forwarded-For names the client, comma-separated addresses "
            "or CIDR networks, for REST (uvicorn's request.client and logs) and gRPC alike. "
            "Empty: no proxy header is believed. A forwarded request is never a local client."
        ),
    )
    allowed_hosts: Annotated[list[str] | None, NoDecode] = Field(
        default=None,
        description=(
            "Host header names REST answers, comma-separated ('*', '*.example.com'); others get "
            "400 (DNS rebinding). Unset: the loopback names when HOST is loopback, else any."
        ),
    )

    @field_validator("version_policy")
    @classmethod
    def _check_version_policy(cls, value: str) -> str:
        try:
            return str(VersionPolicy.parse(value))
        except ServingError as exc:
            raise ValueError(exc.message) from None

    @field_validator("workers", mode="before")
    @classmethod
    def _auto_workers(cls, value: object, info: ValidationInfo) -> object:
        if isinstance(value, str) and value.strip().lower() == "auto":
            return auto_workers(Path(info.data.get("model_repository", "models")))
        return value

    @field_validator("max_body_bytes_in_flight")
    @classmethod
    def _room_for_one_body(cls, value: int, info: ValidationInfo) -> int:
        largest = info.data.get("max_request_bytes", 0)
        if value and value < (least := least_budget(largest)):  # large bodies: all but 1/8
            raise ValueError(f"must be 0 or at least {least} (room for one MAX_REQUEST_BYTES)")
        return value

    @field_validator("admin_token", "admin_token_file", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator(
        "providers", "trusted_proxies", "allowed_hosts", "warm_up_batch_sizes", mode="before"
    )
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [p.strip() for p in value.split(",") if p.strip()]
        return value

    @field_validator("admin_token_file")
    @classmethod
    def _one_token_source(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        # Here, not in the model validator: its errors would print the token with the input.
        if value is not None and info.data.get("admin_token") is not None:
            raise ValueError("set ADMIN_TOKEN or ADMIN_TOKEN_FILE, not both")
        return value

    @model_validator(mode="after")
    def _read_token_file(self) -> Settings:
        if self.admin_token_file is None:
            return self
        try:
            token = self.admin_token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(
                f"ADMIN_TOKEN_FILE {self.admin_token_file}: unreadable ({exc})"
            ) from None
        if not token:
            raise ValueError(f"ADMIN_TOKEN_FILE {self.admin_token_file} is empty")
        self.admin_token = SecretStr(token)
        return self
