"""The one datatype table against what it names: numpy's dtypes, ONNX's types, gRPC's fields."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper
from tritonclient.grpc import service_pb2

from service.core.datatypes import DATATYPES, Datatype

CONTENTS = service_pb2.InferTensorContents.DESCRIPTOR.fields_by_name


def test_the_table_holds_the_datatypes_in_the_order_messages_list_them() -> None:
    assert list(DATATYPES) == ["UINT8", "FP32", "FP16", "INT64", "INT32", "BOOL"]
    assert all(name == d.name for name, d in DATATYPES.items())


@pytest.mark.parametrize("datatype", DATATYPES.values(), ids=DATATYPES)
def test_each_datatype_agrees_with_numpy_onnx_and_grpc(datatype: Datatype) -> None:
    dtype = np.dtype(datatype.dtype)
    assert dtype.itemsize == datatype.size
    onnx_type = helper.np_dtype_to_tensor_dtype(dtype)
    name = "float" if onnx_type == TensorProto.FLOAT else TensorProto.DataType.Name(onnx_type)
    assert datatype.onnx_type == f"tensor({name.lower()})"
    if datatype.value_range is not None:
        info = np.iinfo(dtype)
        assert datatype.value_range == (info.min, info.max)
    field = datatype.contents_field
    assert field is None or field in CONTENTS, field
    assert (field is None) == (datatype.name == "FP16")  # FP16 travels as raw bytes only
