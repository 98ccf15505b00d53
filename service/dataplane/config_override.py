"""A load's config override (Triton's ``load`` with ``parameters.config``): the batching fields
this service can change for one load, checked against the server's limits and turned into the
model's runtime options (``engine/batching_options.py``, the rule a ``config.pbtxt`` follows too).
The wire's JSON is parsed by the adapters (``api/config_override.py``).
"""

from __future__ import annotations

from collections.abc import Iterable

from service.core.errors import InvalidConfig, InvalidInput, ModelLoadFailed
from service.engine.batching_options import ConfigOverride, batching_options
from service.engine.runtime import RuntimeOptions

__all__ = ["ConfigOverride", "check_load_parameters", "override_options"]


def override_options(name: str, override: ConfigOverride, base: RuntimeOptions) -> RuntimeOptions:
    """``base`` (from the settings) with ``override`` applied; ``ModelLoadFailed`` (400) naming
    the field when a value is out of this server's bounds."""
    try:
        return batching_options(override, base)
    except InvalidConfig as exc:
        raise ModelLoadFailed(
            f"load failed for model {name!r}: config override: {exc.message}"
        ) from None


def check_load_parameters(names: Iterable[str]) -> None:
    """Load's ``file:`` overrides are refused: versions come from the repository."""
    overrides = sorted(k for k in names if str(k).startswith("file:"))
    if overrides:
        raise InvalidInput(
            f"parameters {overrides} are not supported: publish the version into the repository"
        )
