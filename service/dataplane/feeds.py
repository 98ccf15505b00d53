"""What a tensor model takes from a request: every input it lists, by name, checked against the
model (names, datatypes, shapes, one batch size) before the request joins the batch queue."""

from __future__ import annotations

from collections.abc import Sequence

from service.core.card import TensorSpec
from service.core.errors import InvalidInput
from service.dataplane.types import InputTensor
from service.engine.named_rows import NamedRows
from service.engine.runtime import ModelRuntime


def model_feeds(
    runtime: ModelRuntime, inputs: Sequence[InputTensor], requested: Sequence[str]
) -> NamedRows:
    """A tensor model's inputs from a request: each one the model lists, none it does not, in
    the model's datatype and shape; a 400 naming the tensor otherwise."""
    specs = {t.name: t for t in runtime.card.inputs}
    given: dict[str, InputTensor] = {}
    for tensor in inputs:
        if tensor.name in given:
            raise InvalidInput(f"input {tensor.name!r} is given twice")
        if tensor.name not in specs:
            raise InvalidInput(
                f"unexpected input {tensor.name!r}: model {runtime.name!r} takes {list(specs)}"
            )
        given[tensor.name] = tensor
    missing = [name for name in specs if name not in given]
    if missing:
        raise InvalidInput(
            f"model {runtime.name!r} takes inputs {list(specs)}; the request lacks {missing}"
        )
    unknown = sorted(set(requested) - set(runtime.output_names))
    if unknown:
        raise InvalidInput(
            f"unknown output(s) {unknown}; model {runtime.name!r} has {runtime.output_names}"
        )
    for name, spec in specs.items():
        _check(given[name], spec)
    rows = _batch_size(list(given.values())) if runtime.batched else 1
    return NamedRows({name: given[name].data for name in specs}, rows)


def _check(tensor: InputTensor, spec: TensorSpec) -> None:
    where = f"input {tensor.name!r}"
    if tensor.datatype != spec.datatype:
        raise InvalidInput(f"{where}: datatype {tensor.datatype}, the model takes {spec.datatype}")
    shape = tensor.shape
    fits = len(shape) == len(spec.shape) and all(
        d == -1 or d == s for d, s in zip(spec.shape, shape, strict=True)
    )
    if not fits:
        raise InvalidInput(f"{where}: shape {shape} does not fit the model's {spec.shape}")


def _batch_size(tensors: Sequence[InputTensor]) -> int:
    """The leading axis every input of a batched model shares (a request is one batch)."""
    sizes = {t.name: t.shape[0] for t in tensors}
    if len(set(sizes.values())) != 1:
        raise InvalidInput(f"the inputs' batch sizes differ: {sizes}")
    rows = next(iter(sizes.values()))
    if rows < 1:
        raise InvalidInput(f"inputs {list(sizes)}: the batch is empty")
    return rows
