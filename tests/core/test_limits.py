"""``check_json_values``: a JSON body of images refused on its count of values before parsing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from service.core.errors import PayloadTooLarge
from service.core.limits import JSON_SEPARATOR_ALLOWANCE, check_json_values


@pytest.mark.parametrize("shape", [(4, 32, 32, 3), (4, 3072), (12288,)])
def test_a_nested_array_has_one_comma_fewer_than_values_whatever_its_shape(
    shape: tuple[int, ...],
) -> None:
    body = json.dumps({"instances": np.zeros(shape, int).tolist()}).encode()
    assert body.count(b",") == 4 * 3072 - 1
    check_json_values(body, 4 * 3072, "4 images")  # exactly what they need: taken


def test_a_body_over_its_values_is_refused_naming_them() -> None:
    most = 3072
    fits = b"[" + b"0," * (most + JSON_SEPARATOR_ALLOWANCE) + b"0]"
    check_json_values(fits, most, "one image")  # the allowance covers other fields' commas
    over = b"[" + b"0," * (most + JSON_SEPARATOR_ALLOWANCE + 1) + b"0]"
    with pytest.raises(PayloadTooLarge, match=r"about 68609 values, more than one image \(3072\)"):
        check_json_values(over, most, "one image")
