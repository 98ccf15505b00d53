"""The one datatype table against what it names: numpy's dtypes, ONNX's types, gRPC's fields."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper
from tritonclient.grpc import service_pb2
from tritonclient.utils import np_to_triton_dtype, triton_to_np_dtype

from service.core.datatypes import DATATYPES, Datatype

CONTENTS = service_pb2.InferTensorContents.DESCRIPTOR.fields_by_name
# Every datatype onnxruntime runs that the protocol names (issue 31), in the order messages list
# them: the image models' types first.
EXPECTED = ["UINT8", "FP32", "FP16", "INT64", "INT32", "BOOL", "INT8", "INT16", "UINT16"]
EXPECTED += ["UINT32", "UINT64", "FP64", "BYTES"]


def test_the_table_holds_every_datatype_in_the_order_messages_list_them() -> None:
    assert list(DATATYPES) == EXPECTED
    assert all(name == d.name for name, d in DATATYPES.items())


@pytest.mark.parametrize("datatype", DATATYPES.values(), ids=DATATYPES)
def test_each_datatype_agrees_with_numpy_onnx_tritonclient_and_grpc(datatype: Datatype) -> None:
    dtype = np.dtype(datatype.dtype)
    assert np_to_triton_dtype(dtype) == datatype.name or datatype.name == "BYTES"
    assert np.dtype(triton_to_np_dtype(datatype.name)) == dtype
    if datatype.name == "BYTES":
        assert datatype.size is None and datatype.onnx_type == "tensor(string)"
    else:
        assert dtype.itemsize == datatype.size
        onnx_type = helper.np_dtype_to_tensor_dtype(dtype)
        name = TensorProto.DataType.Name(onnx_type).lower()
        assert datatype.onnx_type == f"tensor({name})"
    if datatype.value_range is not None:
        info = np.iinfo(dtype)
        assert datatype.value_range == (info.min, info.max)
    else:
        assert dtype.kind not in "iu"
    field = datatype.contents_field
    assert field is None or field in CONTENTS, field
    assert (field is None) == (datatype.name == "FP16")  # FP16 travels as raw bytes only


FIELDS = {"INT8": "int_contents", "INT16": "int_contents", "UINT16": "uint_contents"}
FIELDS |= {"UINT32": "uint_contents", "UINT64": "uint64_contents", "FP64": "fp64_contents"}
FIELDS |= {"BYTES": "bytes_contents", "BOOL": "bool_contents", "INT64": "int64_contents"}


@pytest.mark.parametrize(("datatype", "field"), FIELDS.items())
def test_typed_contents_fields_are_the_protocols(datatype: str, field: str) -> None:
    """The Open Inference Protocol's gRPC mapping: 8- and 16-bit integers share the 32-bit
    fields."""
    assert DATATYPES[datatype].contents_field == field
