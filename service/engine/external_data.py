"""A graph's external data files (weights kept beside ``model.onnx``, as exporters save large
models): the names the graph gives them, and their bytes read by the server from the version
folder alone, which onnxruntime then takes from memory (``large_graphs.onnxruntime_session``).
Left to read them itself, onnxruntime maps a file into memory and keeps it mapped: a weights
file truncated in place while its model was served killed the server (SIGBUS) at the next
request, and one rewritten in place changed the answers without a load."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath

import onnx

from service.core.errors import InvalidCard, shown
from service.core.regular_files import read_regular

MAX_EXTERNAL_BYTES = 1 << 40  # per file: the operator's weights, bounded by the host's memory
ORT_FORMAT = b"ORTM"  # the flatbuffer identifier of onnxruntime's own format, at bytes 4-8


def _tensors(graph: onnx.GraphProto, top: bool = True) -> Iterator[tuple[onnx.TensorProto, bool]]:
    """Every tensor a graph holds (initializers, sparse ones, node attributes, subgraphs'), each
    with whether onnxruntime takes its external data from memory: it reads those of subgraphs
    and sparse initializers from their files whatever it is given."""
    yield from ((tensor, top) for tensor in graph.initializer)
    for sparse in graph.sparse_initializer:
        yield from ((sparse.values, False), (sparse.indices, False))
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t, top
            yield from ((tensor, top) for tensor in attribute.tensors)
            if attribute.HasField("g"):
                yield from _tensors(attribute.g, False)
            for subgraph in attribute.graphs:
                yield from _tensors(subgraph, False)


def locations_in(model: onnx.ModelProto) -> tuple[str, ...]:
    """The external data files ``model`` names, each once, in order; ``InvalidCard`` where a
    subgraph (an If or Loop body) or a sparse initializer keeps its data in one: onnxruntime
    would map that file and read it while serving (a truncated one killed the server)."""
    names: dict[str, None] = {}
    for tensor, from_memory in _tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        if not from_memory:
            raise InvalidCard(
                f"tensor {shown(tensor.name)} of a subgraph or a sparse initializer keeps its "
                "data in an external file; not served here (keep it in model.onnx)"
            )
        for entry in tensor.external_data:
            if entry.key == "location":
                names[entry.value] = None
    return tuple(names)


def external_locations(model_bytes: bytes) -> tuple[str, ...]:
    """``locations_in`` the graph; none for one in onnxruntime's own format or one onnx cannot
    read (onnxruntime then says what is wrong with it)."""
    if model_bytes[4:8] == ORT_FORMAT:
        return ()
    try:
        model = onnx.load_model_from_string(model_bytes)
    except Exception:  # protobuf's DecodeError and onnx's own
        return ()
    return locations_in(model)


def read_external(folder: Path, names: Sequence[str]) -> dict[str, bytes]:
    """Each named file's bytes, read from ``folder`` and nowhere else (through a link only to a
    file inside it), a regular file only (a FIFO would block the load); ``InvalidCard`` naming
    the file as the graph names it, never a path on the server."""
    top, files = folder.resolve(), {}
    for name in names:
        where = folder / name
        if PurePosixPath(name).is_absolute() or not where.resolve().is_relative_to(top):
            raise InvalidCard(f"external data file {shown(name)} lies outside the version folder")
        try:
            files[name] = read_regular(where, MAX_EXTERNAL_BYTES)
        except FileNotFoundError:
            raise InvalidCard(f"external data file {shown(name)} is missing") from None
        except OSError as exc:
            raise InvalidCard(f"external data file {shown(name)}: {exc.strerror}") from None
    return files
