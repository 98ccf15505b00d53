"""A Triton model folder's ``config.pbtxt``, read as Triton reads it (protobuf's text format and
Triton's ``model_config.proto``, which tritonclient ships) into what this service serves: tensors,
labels, version policy and batching. A field it would not honour is refused by name, so a model is
served as its file says or not at all (UNAVAILABLE with the reason)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from service.core.card import TensorSpec
from service.core.datatypes import DATATYPES
from service.core.errors import InvalidConfig
from service.core.limits import MAX_RANK
from service.core.regular_files import NotRegular, TooLarge, read_regular_stat
from service.core.version_policy import VersionPolicy
from service.engine.batching_options import ConfigOverride

CONFIG_PBTXT = "config.pbtxt"
MAX_CONFIG_BYTES = 1 << 20  # Triton's own configs are a few KiB
MAX_LABELS_BYTES = 1 << 20  # 100,000 labels of ten characters
PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"
MODEL_FILENAME = "model.onnx"
FORMATS = ("FORMAT_NONE", "FORMAT_NHWC", "FORMAT_NCHW")
# (size, mtime_ns, inode) of config.pbtxt and of the labels file it names; None: no such file.
FileStat = tuple[int, int, int] | None

# The fields this service reads or accepts, as a tree: a subtree lists the fields allowed under a
# message, None allows anything under it. Any other field the file sets is refused by name.
Tree = dict[str, "Tree | None"]
ACCEPTED: Tree = {
    "name": None,
    "platform": None,
    "backend": None,
    "runtime": None,
    "version_policy": None,
    "max_batch_size": None,
    "input": {"name": None, "data_type": None, "format": None, "dims": None},
    "output": {"name": None, "data_type": None, "dims": None, "label_filename": None},
    "dynamic_batching": {
        "preferred_batch_size": None,
        "max_queue_delay_microseconds": None,
        "preserve_ordering": None,  # every request has its own answer here, in any order
        "default_queue_policy": {"max_queue_size": None, "allow_timeout_override": None},
    },
    "instance_group": {"name": None, "kind": None, "count": None, "gpus": None},
    # Pinned memory and kernel gathering are GPU copies: nothing to do on a CPU, accepted.
    "optimization": {
        "input_pinned_memory": None,
        "output_pinned_memory": None,
        "gather_kernel_buffer_threshold": None,
    },
    "default_model_filename": None,
    "model_transaction_policy": {},  # decoupled: false is the default and is not "set"
    "response_cache": {},  # enable: false likewise
}
WHY_NOT: dict[str, str] = {
    "ensemble_scheduling": "ensembles are not run here; serve each model and chain them in the "
    "client",
    "sequence_batching": "there is no sequence batcher here (stateful models are not served)",
    "model_transaction_policy.decoupled": "decoupled models (many responses to one request) are "
    "not served here",
    "response_cache.enable": "the response cache is opted into with the RESPONSE_CACHE setting",
    "parameters": "backend parameters are not read here (threads are INTRA_OP_THREADS)",
    "model_warmup": "warm-up runs zeros at WARM_UP_BATCH_SIZES",
    "dynamic_batching.default_queue_policy.default_timeout_microseconds": "the queue timeout is "
    "REQUEST_TIMEOUT_US, or a request's timeout parameter",
    "optimization.graph": "the graph optimization level is GRAPH_OPTIMIZATION_LEVEL",
    "optimization.execution_accelerators": "execution providers are the PROVIDERS setting",
}


@dataclass(frozen=True)
class FileTensor:
    """An input or output as the file declares it: the spec with the batch axis (-1) in front
    when ``max_batch_size`` > 0, the input's format, the output's labels file ("" for none)."""

    spec: TensorSpec
    format: str = "FORMAT_NONE"
    label_filename: str = ""


@dataclass(frozen=True)
class TritonConfig:
    """What a ``config.pbtxt`` asks of this service, checked; empty ``inputs`` or ``outputs``:
    read from the graph (Triton's auto-complete)."""

    name: str
    max_batch_size: int
    inputs: tuple[FileTensor, ...]
    outputs: tuple[FileTensor, ...]
    version_policy: VersionPolicy | None  # None: the server's VERSION_POLICY
    batching: ConfigOverride
    class_names: tuple[str, ...] = ()  # the labels file's lines
    notes: tuple[str, ...] = ()  # accepted fields and what they mean here, for the log
    signature: tuple[FileStat, ...] = field(default=(), compare=False)
    # the files as read ((name, bytes): config.pbtxt, the labels), for a worker group's copy
    files: tuple[tuple[str, bytes], ...] = field(default=(), compare=False, repr=False)


def _path(name: str, index: int | None) -> str:
    return name if index is None else f"{name}[{index}]"


def unaccepted(message: Any, tree: Tree, where: str = "") -> str | None:
    """The first field set in ``message`` outside ``tree`` (its path, e.g. ``input[1].reshape``),
    or None when every set field is accepted."""
    for descriptor, value in message.ListFields():
        name = descriptor.name
        if name not in tree:
            return f"{where}{name}"
        subtree = tree[name]
        if subtree is None:
            continue
        if descriptor.is_repeated:
            for i, item in enumerate(value):
                found = unaccepted(item, subtree, f"{where}{_path(name, i)}.")
                if found:
                    return found
        else:
            found = unaccepted(value, subtree, f"{where}{name}.")
            if found:
                return found
    return None


def _refused(where: str) -> InvalidConfig:
    why = WHY_NOT.get(re.sub(r"\[\d+\]", "", where), "this service does not honour it")
    return InvalidConfig(f"{CONFIG_PBTXT}: {where!r} is not supported here: {why}")


def _datatype(value: int, where: str) -> str:
    """Triton's TYPE_x as the protocol's datatype, through the one datatype table."""
    enum = model_config_pb2.DataType.Name(value)
    name = "BYTES" if enum == "TYPE_STRING" else enum.removeprefix("TYPE_")
    if name not in DATATYPES:
        raise InvalidConfig(
            f"{CONFIG_PBTXT}: {where}.data_type {enum} is not served here "
            f"(served: {', '.join(DATATYPES)})"
        )
    return name


def _tensor(message: Any, where: str, batch: bool) -> FileTensor:
    if not message.name:
        raise InvalidConfig(f"{CONFIG_PBTXT}: {where} has no name")
    where = f"{where} {message.name!r}"
    dims = list(message.dims)
    if any(d != -1 and d < 1 for d in dims) or len(dims) + batch > MAX_RANK:
        raise InvalidConfig(
            f"{CONFIG_PBTXT}: {where}: dims {dims} must be -1 or positive, at most {MAX_RANK} axes"
        )
    spec = TensorSpec(message.name, _datatype(message.data_type, where), [-1] * batch + dims)
    if isinstance(message, model_config_pb2.ModelInput):
        return FileTensor(spec, format=model_config_pb2.ModelInput.Format.Name(message.format))
    label = message.label_filename
    if label and (label in (".", "..") or "/" in label or "\\" in label or "\0" in label):
        raise InvalidConfig(f"{CONFIG_PBTXT}: {where}: label_filename must be a file name")
    return FileTensor(spec, label_filename=label)


def _tensors(messages: Any, kind: str, batch: bool) -> tuple[FileTensor, ...]:
    tensors = tuple(_tensor(m, f"{kind}[{i}]", batch) for i, m in enumerate(messages))
    names = [t.spec.name for t in tensors]
    if len(set(names)) != len(names):
        raise InvalidConfig(f"{CONFIG_PBTXT}: {kind} names {names} repeat a name")
    return tensors


def _version_policy(config: Any) -> VersionPolicy | None:
    if not config.HasField("version_policy"):
        return None
    policy = config.version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return VersionPolicy("all")
    if choice == "specific":
        versions = sorted(set(policy.specific.versions))
        if not versions or versions[0] < 1:
            raise InvalidConfig(
                f"{CONFIG_PBTXT}: version_policy.specific.versions must list versions >= 1"
            )
        return VersionPolicy("specific", versions=tuple(versions))
    number = policy.latest.num_versions if choice == "latest" else 1
    if number < 1:
        raise InvalidConfig(f"{CONFIG_PBTXT}: version_policy.latest.num_versions must be >= 1")
    return VersionPolicy("latest", num_versions=number)


def _check_backend(config: Any, folder: str) -> None:
    if config.name and config.name != folder:
        raise InvalidConfig(  # Triton's words
            f"{CONFIG_PBTXT}: unexpected directory name {folder!r} for model {config.name!r}, "
            "directory name must equal model name"
        )
    for what, value, ours in (
        ("platform", config.platform, PLATFORM),
        ("backend", config.backend, BACKEND),
        ("default_model_filename", config.default_model_filename, MODEL_FILENAME),
    ):
        if value not in ("", ours):
            raise InvalidConfig(
                f"{CONFIG_PBTXT}: {what} {value!r} is not served here: this service runs "
                f"{MODEL_FILENAME} with onnxruntime (platform {PLATFORM!r}, backend {BACKEND!r})"
            )
    if config.runtime:
        raise InvalidConfig(f"{CONFIG_PBTXT}: runtime {config.runtime!r} is not supported here")
    if config.max_batch_size < 0:
        raise InvalidConfig(f"{CONFIG_PBTXT}: max_batch_size {config.max_batch_size} is negative")


def _instance_notes(config: Any, gpu_host: bool) -> tuple[str, ...]:
    """KIND_CPU (or AUTO) is what runs here; a GPU group only where a GPU provider is in use."""
    notes = []
    for i, group in enumerate(config.instance_group):
        kind = model_config_pb2.ModelInstanceGroup.Kind.Name(group.kind)
        where = f"{CONFIG_PBTXT}: instance_group[{i}]"
        if kind == "KIND_MODEL":
            raise InvalidConfig(f"{where}.kind KIND_MODEL is not supported here")
        if (kind == "KIND_GPU" or group.gpus) and not gpu_host:
            raise InvalidConfig(
                f"{where}.{'kind KIND_GPU' if kind == 'KIND_GPU' else 'gpus'}: no GPU serves "
                "here (onnxruntime runs on the CPU; PROVIDERS names the execution providers)"
            )
        if group.count > 1:
            notes.append(
                f"instance_group[{i}] count {group.count}: one onnxruntime session per worker "
                "process runs here (WORKERS), parallel inside a run (INTRA_OP_THREADS)"
            )
    return tuple(notes)


def _batching(config: Any) -> ConfigOverride:
    if not config.HasField("dynamic_batching"):
        return ConfigOverride(max_batch_size=config.max_batch_size or None)
    batching = config.dynamic_batching
    return ConfigOverride(
        max_batch_size=config.max_batch_size or None,
        dynamic_batching=True,
        preferred_batch_size=tuple(batching.preferred_batch_size),
        max_queue_delay_microseconds=batching.max_queue_delay_microseconds,
        max_queue_size=batching.default_queue_policy.max_queue_size or None,
    )


def parse_config(text: bytes, folder: str, gpu_host: bool = False) -> TritonConfig:
    """``text`` (a ``config.pbtxt``) for the model folder ``folder``, checked; ``InvalidConfig``
    naming the field or the parse error otherwise. The labels file is ``read_config``'s."""
    if len(text) > MAX_CONFIG_BYTES:
        raise InvalidConfig(f"{CONFIG_PBTXT} is over {MAX_CONFIG_BYTES} bytes; refused")
    config = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(text.decode("utf-8"), config)
    except UnicodeDecodeError as exc:
        raise InvalidConfig(f"{CONFIG_PBTXT} is not UTF-8 text: {exc.reason}") from None
    except (text_format.ParseError, ValueError, RecursionError) as exc:
        raise InvalidConfig(f"{CONFIG_PBTXT} cannot be parsed: {exc}") from None
    where = unaccepted(config, ACCEPTED)
    if where:
        raise _refused(where)
    _check_backend(config, folder)
    batch = config.max_batch_size > 0
    outputs = _tensors(config.output, "output", batch)
    if len({t.label_filename for t in outputs if t.label_filename}) > 1:
        raise InvalidConfig(
            f"{CONFIG_PBTXT}: outputs name different label files; this service keeps one list "
            "of class names per model"
        )
    return TritonConfig(
        name=folder,
        max_batch_size=config.max_batch_size,
        inputs=_tensors(config.input, "input", batch),
        outputs=outputs,
        version_policy=_version_policy(config),
        batching=_batching(config),
        notes=_instance_notes(config, gpu_host),
    )


def _read_bounded(path: Path, limit: int, what: str) -> tuple[bytes, FileStat]:
    """At most ``limit`` bytes of a regular file, and its (size, mtime_ns, inode); opened
    without blocking, so a FIFO in its place cannot stall the poll (``read_regular_stat``)."""
    try:
        data, st = read_regular_stat(path, limit)
    except NotRegular:
        raise InvalidConfig(f"{what} is not a regular file") from None
    except TooLarge:
        raise InvalidConfig(f"{what} is over {limit} bytes; refused") from None
    except OSError as exc:
        raise InvalidConfig(f"{what} cannot be read: {exc.strerror}") from None
    return data, (st.st_size, st.st_mtime_ns, st.st_ino)


def _labels(model_dir: Path, name: str) -> tuple[tuple[str, ...], FileStat, bytes]:
    """One label per line, as Triton reads a label file (a last newline ends the last label)."""
    path = model_dir / name
    if not path.resolve().is_relative_to(model_dir.resolve()):
        raise InvalidConfig(f"label file {name!r} links outside its model folder; refused")
    data, signature = _read_bounded(path, MAX_LABELS_BYTES, f"label file {name!r}")
    try:
        labels = tuple(data.decode("utf-8").splitlines())
    except UnicodeDecodeError as exc:
        raise InvalidConfig(f"label file {name!r} is not UTF-8 text: {exc.reason}") from None
    if not labels:
        raise InvalidConfig(f"label file {name!r} is empty")
    return labels, signature, data


def config_stat(model_dir: Path) -> FileStat:
    """The signature of a model folder's ``config.pbtxt`` (None: there is none)."""
    try:
        st = (model_dir / CONFIG_PBTXT).stat()
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def read_config(model_dir: Path, gpu_host: bool = False) -> TritonConfig | None:
    """The model folder's ``config.pbtxt`` with its labels, checked; None without one."""
    path = model_dir / CONFIG_PBTXT
    if not path.exists() and not path.is_symlink():
        return None
    if not path.resolve().is_relative_to(model_dir.resolve()):
        raise InvalidConfig(f"{CONFIG_PBTXT} links outside its model folder; refused")
    text, config_signature = _read_bounded(path, MAX_CONFIG_BYTES, CONFIG_PBTXT)
    config = parse_config(text, model_dir.name, gpu_host)
    label_files = {t.label_filename for t in config.outputs if t.label_filename}
    if not label_files:
        return replace(config, signature=(config_signature,), files=((CONFIG_PBTXT, text),))
    label_file = label_files.pop()
    labels, label_signature, data = _labels(model_dir, label_file)
    files = ((CONFIG_PBTXT, text), (label_file, data))
    signature = (config_signature, label_signature)
    return replace(config, class_names=labels, signature=signature, files=files)
