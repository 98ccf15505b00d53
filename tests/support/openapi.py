"""Counting what an OpenAPI document lists, so tests derive their numbers from it."""

from __future__ import annotations

from typing import Any

HTTP_METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


def documented_operations(spec: dict[str, Any]) -> set[str]:
    """Every operation of the document as ``METHOD /path`` (e.g. ``GET /v2/health/ready``)."""
    return {
        f"{method.upper()} {path}"
        for path, item in spec["paths"].items()
        for method in HTTP_METHODS
        if method in item
    }
