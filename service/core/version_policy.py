"""Which versions of a model are served, as Triton's ``version_policy``: latest N, all, or specific.

Read from the ``VERSION_POLICY`` setting (``latest``, ``latest:2``, ``all``, ``specific:1,3``) or
from a model's ``config.json``: ``{"version_policy": {"latest": {"num_versions": 2}}}``,
``{"version_policy": {"all": {}}}``, ``{"version_policy": {"specific": {"versions": [1, 3]}}}``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from service.core.errors import InvalidConfig, InvalidInput, ModelNotFound, file_problem, shown
from service.core.regular_files import MAX_JSON_BYTES, read_regular

CONFIG_FILE = "config.json"
PolicyKind = Literal["latest", "all", "specific"]


@dataclass(frozen=True)
class VersionPolicy:
    kind: PolicyKind = "latest"
    num_versions: int = 1  # latest: how many of the highest versions
    versions: tuple[int, ...] = ()  # specific: exactly these

    def select(self, available: Iterable[int]) -> set[int]:
        """The versions to serve out of ``available`` (those on disk that have not failed)."""
        candidates = sorted(set(available), reverse=True)
        if self.kind == "all":
            return set(candidates)
        if self.kind == "specific":
            return set(candidates) & set(self.versions)
        return set(candidates[: self.num_versions])

    def __str__(self) -> str:
        if self.kind == "latest":
            return f"latest:{self.num_versions}"
        if self.kind == "specific":
            return "specific:" + ",".join(str(v) for v in self.versions)
        return "all"

    @classmethod
    def parse(cls, text: str) -> VersionPolicy:
        """The setting's form: ``latest``, ``latest:N``, ``all`` or ``specific:V1,V2``."""
        kind, _, argument = text.strip().partition(":")
        kind, argument = kind.strip().lower(), argument.strip()
        if kind == "latest":
            return cls.from_dict({"latest": {"num_versions": _integer(argument or "1", text)}})
        if kind == "all" and not argument:
            return cls("all")
        if kind == "specific":
            numbers = [_integer(a, text) for a in argument.split(",") if a.strip()]
            return cls.from_dict({"specific": {"versions": numbers}})
        raise InvalidConfig(
            f"version policy {text!r}: expected latest, latest:N, all or specific:V1,V2"
        )

    @classmethod
    def from_dict(cls, data: Any) -> VersionPolicy:
        """Triton's JSON form: exactly one of ``latest``, ``all``, ``specific``."""
        if not isinstance(data, Mapping) or len(data) != 1:
            raise InvalidConfig(
                "version_policy must be an object with one key: latest, all or specific"
            )
        ((kind, body),) = data.items()
        if not isinstance(body, Mapping):
            raise InvalidConfig(f"version_policy.{kind} must be an object")
        if kind == "all":
            return cls("all")
        if kind == "latest":
            number = body.get("num_versions", 1)
            if isinstance(number, bool) or not isinstance(number, int) or number < 1:
                raise InvalidConfig("version_policy.latest.num_versions must be an integer >= 1")
            return cls("latest", num_versions=number)
        if kind == "specific":
            versions = body.get("versions")
            if (
                not isinstance(versions, list)
                or not versions
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in versions)
                or min(versions) < 1
            ):
                raise InvalidConfig(
                    "version_policy.specific.versions must be a non-empty list of integers >= 1"
                )
            return cls("specific", versions=tuple(sorted(set(versions))))
        raise InvalidConfig(f"unknown version_policy {kind!r}: expected latest, all or specific")


def _integer(text: str, whole: str) -> int:
    if not (text.strip().isascii() and text.strip().isdigit()):  # int() reads "١" as 1
        raise InvalidConfig(f"version policy {whole!r}: {text.strip()!r} is not a positive integer")
    return int(text)


def read_model_config(model_dir: Path) -> VersionPolicy | None:
    """The policy in ``<model>/config.json``, or None when there is no such file."""
    path = model_dir / CONFIG_FILE
    try:
        data = json.loads(read_regular(path, MAX_JSON_BYTES).decode("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidConfig(f"{CONFIG_FILE}: unreadable: {file_problem(exc)}") from None
    if not isinstance(data, Mapping):
        raise InvalidConfig(f"{CONFIG_FILE}: must be a JSON object")
    unknown = sorted(set(data) - {"version_policy"})
    if unknown:
        raise InvalidConfig(
            f"{CONFIG_FILE}: unknown key(s) {unknown}; this service reads version_policy"
        )
    if "version_policy" not in data:
        return None
    try:
        return VersionPolicy.from_dict(data["version_policy"])
    except InvalidConfig as exc:
        raise InvalidConfig(f"{CONFIG_FILE}: {exc.message}") from None


def body_version(value: object) -> str | None:
    """A request body's ``model_version`` (a string, as the protocol has it; empty means none):
    a positive number of at most nine ASCII digits, kept as written; else ``InvalidInput``."""
    if value is None or value == "":
        return None
    number = isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 9
    if number and int(str(value)) > 0:
        return str(value)
    raise InvalidInput(f"'model_version' must be a positive version number string, not {value!r}")


def parse_version(version: str | int | None) -> int | None:
    """A version from a URL: a positive integer, or None for "the served one"."""
    if version is None or version == "":
        return None
    if isinstance(version, int):
        number = version
    elif version.isascii() and version.isdigit() and len(version) <= 9:  # not "١" (Arabic 1)
        number = int(version)
    else:
        raise ModelNotFound(f"version {shown(str(version))} is not a positive integer")
    if number < 1:
        raise ModelNotFound(f"version {shown(str(version))} is not a positive integer")
    return number
