"""The classification extension's pure parts: the count's rule, which outputs may be classified,
the ranked ``"score:index:label"`` strings, and BYTES on the wire as Triton lays it out."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from service.api.tensors import bytes_strings
from service.core.card import TensorSpec
from service.core.classification import check_class_count
from service.core.errors import InvalidInput
from service.dataplane.classification import (
    check_classified,
    classify_outputs,
    classify_rows,
    top_k_indices,
)
from service.dataplane.types import RequestedOutput, SharedMemoryRef
from service.engine.tensor_bytes import tensor_to_bytes

OUTPUTS = [
    TensorSpec("probabilities", "FP32", [-1, 3]),
    TensorSpec("half", "FP16", [-1, 3]),
    TensorSpec("counts", "INT64", [-1, 3]),
    TensorSpec("total", "FP32", []),
]


@pytest.mark.parametrize("value", [0, -1, "3", 2.5, True, None, [1]])
def test_class_count_must_be_a_positive_integer(value: object) -> None:
    with pytest.raises(InvalidInput, match="output 'probabilities'"):
        check_class_count(value, "probabilities")


@given(st.integers(min_value=1, max_value=2**80))
def test_any_positive_class_count_is_taken_as_given(value: int) -> None:
    assert check_class_count(value, "probabilities") == value


@pytest.mark.parametrize(
    ("name", "region", "message"),
    [
        ("nope", None, "does not have"),
        ("counts", None, "INT64"),
        ("probabilities", SharedMemoryRef("r", 64), "shared memory"),
        ("total", None, "rows of scores"),  # a scalar: was a 500 (IndexError) past the check
    ],
)
def test_only_an_fp_output_answered_in_the_reply_is_classified(
    name: str, region: SharedMemoryRef | None, message: str
) -> None:
    requested = [RequestedOutput(name, False, region)]
    with pytest.raises(InvalidInput, match=message) as refused:
        check_classified(requested, {name: 2}, OUTPUTS)
    assert f"output {name!r}" in str(refused.value)


def test_fp16_and_fp32_outputs_are_classified() -> None:
    check_classified([], {"probabilities": 1, "half": 3}, OUTPUTS)


def test_rows_rank_best_first_with_labels_and_triton_score_format() -> None:
    scores = np.array([[0.1, 0.7, 0.2], [-1.5, 2.0, 2.0]], dtype=np.float32)
    found = classify_rows(scores, 2, ["cat", "dog", "emu"])
    assert found.shape == (2, 2)
    assert found.tolist() == [
        [b"0.700000:1:dog", b"0.200000:2:emu"],
        [b"2.000000:1:dog", b"2.000000:2:emu"],  # ties: the lower index first, as top_k
    ]


def test_rows_without_a_label_each_are_score_and_index_clamped_to_the_row() -> None:
    found = classify_rows(np.array([[3.0, -4.25]], dtype=np.float16), 10, [])
    assert found.tolist() == [[b"3.000000:0", b"-4.250000:1"]]


def test_classify_outputs_replaces_only_the_outputs_asked_for() -> None:
    logits = np.array([[1.0, 2.0]], dtype=np.float32)
    other = np.zeros((1, 4), dtype=np.float32)
    found = classify_outputs({"logits": logits, "other": other}, {"logits": 1}, ["a", "b"])
    assert found["logits"].tolist() == [[b"2.000000:1:b"]]
    assert found["other"] is other


def test_bytes_outputs_travel_as_tritons_length_prefixed_elements_and_json_strings() -> None:
    found = classify_rows(np.array([[0.25, 0.75]], dtype=np.float32), 2, ["ä", "b"])
    raw = tensor_to_bytes(found)
    assert raw == serialize_byte_tensor(found).item()  # what tritonclient sends
    assert deserialize_bytes_tensor(raw).tolist() == found.ravel().tolist()
    assert bytes_strings(found) == ["0.750000:1:b", "0.250000:0:ä"]


def test_a_scalar_output_met_at_run_time_is_refused_in_words() -> None:
    with pytest.raises(InvalidInput, match="rows of scores"):
        classify_rows(np.float32(2.5) * np.ones(()), 1, [])


@given(
    st.integers(1, 6),
    st.integers(2, 80),
    st.integers(1, 80),
    st.integers(1, 5),
    st.sampled_from(["float16", "float32", "float64"]),
    st.integers(0, 2**32 - 1),
)
def test_top_k_is_a_stable_descending_sorts_first_k_ties_and_all(
    rows: int, width: int, k: int, levels: int, dtype: str, seed: int
) -> None:
    """Wide rows are not sorted whole (512 of 16,384 scores took 0.74 s), yet the order is the
    stable sort's exactly: few distinct levels make ties at every boundary."""
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, levels, (rows, width)).astype(dtype)
    scores[0, :2] = [0.0, -0.0]
    k = min(k, width)
    expected = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(top_k_indices(scores, k), expected)
