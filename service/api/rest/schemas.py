"""Request and response schemas. Routes read their JSON bodies themselves (content type, size,
malformed JSON) and validate them with these models (``http_io.validated_body``); the v2 infer
body, the hot path, is decoded by ``codec`` and only documented here.

Field names quote the Open Inference Protocol v2 and the TF Serving / KServe v1 conventions.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.api.rest.json_wire import json_object
from service.core.datatypes import DATATYPES


class ErrorResponse(BaseModel):
    error: str = Field(description="What was wrong, naming the tensor, instance or limit.")


class MetadataTensor(BaseModel):
    name: str
    datatype: str = Field(description=f"One of {sorted(DATATYPES)}.")
    shape: list[int] = Field(description="-1 marks a dynamic axis (the batch).")


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]
    parameters: dict[str, Any] = Field(
        description="execution_providers in use and the class names."
    )


class RepositoryIndexEntry(BaseModel):
    name: str
    version: str
    state: str = Field(description="READY, UNAVAILABLE (failed its checks) or UNLOADED.")
    reason: str = Field(description="Why the version is in that state, if anything is to say.")


class RepositoryRequest(BaseModel):
    """The optional body of the repository extension's calls (Triton's)."""

    ready: bool = Field(False, description="index: only the READY versions.")
    parameters: dict[str, Any] = Field(
        default_factory=dict,
        description="load: 'config', Triton's JSON model configuration, changes max_batch_size "
        "and dynamic_batching until a load without it; 'file:' overrides are refused; "
        "unload: unload_dependents is accepted (there are no ensembles).",
    )


class RequestInput(BaseModel):
    model_config = ConfigDict(extra="forbid")  # unknown fields are a 400

    name: str = Field(examples=["images"])
    shape: list[int] = Field(examples=[[1, 32, 32, 3]])
    datatype: str = Field(examples=["UINT8"], description="UINT8 pixels, or FP32 in 0..1.")
    parameters: dict[str, Any] | None = Field(
        None, description="binary_data_size when the data follows the JSON header."
    )
    data: list[Any] | None = Field(None, description="Row-major values, flat or nested.")


class RequestOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")  # unknown fields are a 400

    name: str = Field(examples=["probabilities"])
    parameters: dict[str, Any] | None = Field(None, description="binary_data: true for raw bytes.")


class InferenceRequest(BaseModel):
    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "description": "Other top-level fields are ignored, as Triton and MLServer ignore "
            "them, except one that looks like a misspelt field here ('input', 'output'): a 400."
        },
    )

    id: str | None = None
    model_name: str | None = Field(
        None, description="Optional (KServe's SDK sends it); must match the URL's model."
    )
    model_version: str | None = Field(
        None,
        description="Optional; must match the URL's version, or picks the version if the URL "
        "names none.",
    )
    parameters: dict[str, Any] | None = Field(
        None, description="binary_data_output: true returns every output as raw bytes."
    )
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[ResponseOutput]


class ClassScore(BaseModel):
    name: str = Field(examples=["cat"])
    index: int = Field(examples=[3])
    probability: float = Field(examples=[0.93])


class PredictRequest(BaseModel):
    """TF Serving's REST request: the row format (``instances``) or the columnar one (``inputs``),
    one of the two."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "description": "TF Serving's row format (instances) or columnar format (inputs), one "
            "of the two. Other top-level fields are ignored, except one that looks like a "
            "misspelt field here ('instance', 'topk'): a 400."
        },
    )

    instances: list[Any] | None = Field(
        None,
        description='Row format. Each a 32x32x3 nested array of 0..255 pixels, {"b64": "<base64 '
        'image>"}, or either under the input\'s name: {"images": [...]}, {"image_bytes": '
        '{"b64": ...}} (any name ending in _bytes). A tensor model: one object per row naming '
        'each of its inputs ({"INPUT0": [...], "INPUT1": [...]}).',
    )
    inputs: list[Any] | dict[str, Any] | None = Field(
        None,
        description='Columnar format: the list of images as in instances, or {"images": [...]}. '
        'A tensor model: {"INPUT0": [[...]], ...}, each input whole with its batch axis.',
    )
    signature_name: str | None = Field(
        None, description="The model's one signature: 'serving_default' (or its card's name)."
    )
    top_k: int | None = Field(None, ge=1, description="Classes per image (default: setting).")

    @model_validator(mode="before")
    @classmethod
    def _no_misspelt_fields(cls, data: Any) -> Any:
        """Other top-level fields are ignored, bar one that looks like a misspelt field here:
        ignoring it would change the answer without a word (``json_object``)."""
        return json_object(data, "the body", frozenset(cls.model_fields), ignore_unknown=True)


# What ``loads_object`` converts of a ``:predict`` body (the other keys keep only their names)
PREDICT_FIELDS = frozenset(PredictRequest.model_fields)


class PredictResponse(BaseModel):
    model_name: str
    model_version: str
    predictions: list[list[ClassScore]] = Field(
        description="Per instance, in order: the top-k classes, most probable first."
    )


class ClassifyResponse(PredictResponse):
    answers: list[str] = Field(
        description="Per image: the top-1 class name, or 'uncertain' when its probability is "
        "under abstain_below (the predictions still show every probability).",
        examples=[["cat", "uncertain"]],
    )
    abstain_below: float = Field(description="The server's ABSTAIN_BELOW (0: never uncertain).")


class LayerRowSchema(BaseModel):
    name: str
    type: str
    output_shape: list[int | None] = Field(description="Batch axis first, as null.")
    params: int
    trainable_params: int
    note: str | None = None
    onnx_nodes: list[str]


class LayerTableResponse(BaseModel):
    model_name: str
    model_version: str
    input_shape: list[int]
    layers: list[LayerRowSchema]
    total_params: int
    trainable_params: int
    non_trainable_params: int
    notes: list[str]


def _inline(schema: dict[str, Any], defs: dict[str, Any]) -> Any:
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline(defs[ref.removeprefix("#/$defs/")], defs)
        return {k: _inline(v, defs) for k, v in schema.items() if k != "$defs"}
    if isinstance(schema, list):
        return [_inline(v, defs) for v in schema]
    return schema


def json_body(model: type[BaseModel], example: Any, required: bool = True) -> dict[str, Any]:
    """``openapi_extra`` documenting a JSON body that the route reads itself (to keep its
    content-type and error rules, or on the fast path)."""
    schema = model.model_json_schema()
    inline = _inline(schema, schema.get("$defs", {}))
    return {
        "requestBody": {
            "required": required,
            "content": {"application/json": {"schema": inline, "example": example}},
        }
    }


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorResponse} for status in statuses}
