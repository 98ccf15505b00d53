"""The settings of the loop from served predictions back to a better model (docs/monitoring.md):
the prediction log, feedback, the monitor and calibrated answers.

A base of ``service.settings.Settings``, so they are fields of the one settings class (the same
environment variables); kept here to keep that module readable.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings


class QualitySettings(BaseSettings):
    """Prediction log, feedback, monitor and abstention settings."""

    prediction_log: bool = Field(
        default=False,
        description="Record every classification (about 3 % of throughput at 64 clients, "
        "docs/monitoring.md; off by default: it needs a writable DATA_DIR or a database).",
    )
    prediction_log_url: str | None = Field(
        default=None,
        description="SQLAlchemy database URL (postgresql+psycopg://...); unset: SQLite.",
    )
    data_dir: Path = Field(default=Path("data/service"), description="Where the SQLite log lives.")
    capture_images: float = Field(
        default=0.0, ge=0, le=1, description="Share of requests whose images are stored (0: none)."
    )
    prediction_log_max_age_s: float = Field(default=30 * 86400, gt=0, description="Retention.")
    prediction_log_max_rows: int = Field(default=1_000_000, ge=1, description="Retention.")
    prediction_log_max_bytes: int = Field(
        default=2 * 1024**3,
        ge=0,
        description="Retention: the oldest records go while the SQLite log holds more (checked "
        "every 5 s; a client's long request ids or captured images fill rows faster; 0: no "
        "bound). Not applied to PREDICTION_LOG_URL's databases.",
    )
    prediction_log_queue: int = Field(
        default=65_536,
        ge=1,
        description="Entries waiting for the writer (a batched run's answers, or one request's) "
        "before new ones drop.",
    )
    prediction_log_retry_s: float = Field(
        default=30.0,
        ge=0,
        description="How long a batch whose write failed (database down or locked) is retried "
        "before it is dropped (0: dropped at once); new answers wait in the queue meanwhile.",
    )
    feedback_open: bool = Field(
        default=False,
        description="POST /v1/feedback for anyone, not only admins (token/loopback); their labels "
        "are recorded as open: the retrain trains on them only with --feedback-open-labels.",
    )
    monitor_window_s: float = Field(
        default=3600.0, gt=0, description="The monitor's default window over the log, in seconds."
    )
    monitor_refresh_s: float = Field(
        default=15.0,
        ge=0,
        description="How often the Prometheus drift and accuracy gauges are read from the log "
        "(0: never).",
    )
    drift_threshold: float = Field(
        default=0.1,
        gt=0,
        le=1,
        description="Jensen-Shannon distance to the card's reference over which traffic drifts.",
    )
    abstain_below: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description=":classify answers 'uncertain' under this top-1 probability (0: never).",
    )
