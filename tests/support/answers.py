"""Comparing two infer answers that may come from runs of different sizes."""

from __future__ import annotations

import math
from typing import Any


def same_answer(a: Any, b: Any) -> bool:
    """Equal, numbers to within float32's last bits (a run of many images and a run of one
    round differently) and classification labels (``score:index:label``) to their score's last
    digits; dicts, lists and tuples compared item by item."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_answer(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same_answer(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6)
    if isinstance(a, str) and isinstance(b, str) and a.count(":") == 2 == b.count(":"):
        score_a, _, label_a = a.partition(":")
        score_b, _, label_b = b.partition(":")
        return label_a == label_b and math.isclose(float(score_a), float(score_b), abs_tol=1e-5)
    return bool(a == b)
