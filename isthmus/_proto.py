"""gRPC stubs of `protos/isthmus/v1/*.proto`, built on first use, and the tensor codec.

The stubs are generated with `grpc_tools.protoc` into `isthmus/_generated/` (gitignored) the
first time they are imported, and again whenever a `.proto` file or the grpcio-tools version
changes (a stamp file holds the sha256 of both). No Makefile step is needed: a fresh
`pip install -e .` works. Generation is guarded by a file lock and an atomic rename, so
concurrent processes (two edge agents starting together) never see half-written modules.

Tensors travel as `isthmus.v1.Tensor`: raw row-major bytes (`dtype`, `shape`) or an Arrow IPC
stream. `decode_tensor` checks every field and raises `TensorDecodeError` (never a crash) on bad
input: `len(data) = prod(shape) * itemsize` must hold exactly.

This module imports only the standard library, numpy, pyarrow and grpcio-tools (no Ray, no torch).
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib
import os
import shutil
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

__all__ = [
    "MAX_TENSOR_BYTES",
    "PROTO_FILES",
    "TensorDecodeError",
    "decode_tensor",
    "encode_tensor",
    "generated_dir",
    "load",
]

PROTO_FILES = ("tensor.proto", "inference.proto", "control_plane.proto")
MAX_TENSOR_BYTES = 256 * 1024 * 1024
_MAX_DIMS = 8
_DTYPES = ("float32", "float16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")

_PKG_DIR = Path(__file__).resolve().parent
_PROTO_ROOT = _PKG_DIR.parent / "protos"
_OUT = _PKG_DIR / "_generated"
_IMPORT_PREFIX = "isthmus._generated."


class TensorDecodeError(ValueError):
    """A `Tensor` message that does not describe a valid tensor."""


def generated_dir() -> Path:
    """Directory holding the generated stubs (created on demand)."""
    return _OUT


def _stamp() -> str:
    import grpc_tools

    digest = hashlib.sha256()
    digest.update(getattr(grpc_tools, "__version__", "").encode())
    for name in PROTO_FILES:
        path = _PROTO_ROOT / "isthmus" / "v1" / name
        if not path.is_file():
            raise FileNotFoundError(
                f"proto file {path} is missing. To fix: run from a checkout of the isthmus repository "
                "installed with `pip install -e .` (the protos/ directory sits beside the package).")
        digest.update(name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _generate(stamp: str) -> None:
    from grpc_tools import protoc

    include = Path(importlib.import_module("grpc_tools").__file__).parent / "_proto"
    _OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="._generated-", dir=_OUT.parent))
    tmp.chmod(0o755)  # mkdtemp makes 0700; other users (a service account) must import the stubs too
    try:
        files = [str(_PROTO_ROOT / "isthmus" / "v1" / n) for n in PROTO_FILES]
        code = protoc.main(["grpc_tools.protoc", f"-I{_PROTO_ROOT}", f"-I{include}",
                            f"--python_out={tmp}", f"--grpc_python_out={tmp}", *files])
        if code != 0:
            raise RuntimeError(f"grpc_tools.protoc failed with exit code {code} on {files}. "
                               "To fix: check the .proto files compile (`python -m grpc_tools.protoc`).")
        # protoc writes `from isthmus.v1 import x_pb2`; that name is our own package, so point
        # the imports at the generated tree instead.
        for py in (tmp / "isthmus" / "v1").glob("*.py"):
            text = py.read_text().replace("from isthmus.v1 import", f"from {_IMPORT_PREFIX}isthmus.v1 import")
            py.write_text(text)
        for pkg in (tmp, tmp / "isthmus", tmp / "isthmus" / "v1"):
            (pkg / "__init__.py").touch()
        (tmp / "STAMP").write_text(stamp)
        old = _OUT.parent / f"._generated-old-{os.getpid()}"
        if _OUT.exists():
            _OUT.rename(old)
        tmp.rename(_OUT)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _ensure_generated() -> None:
    stamp = _stamp()
    stamp_file = _OUT / "STAMP"
    if stamp_file.is_file() and stamp_file.read_text() == stamp:
        return
    try:
        with open(_OUT.parent / "._generated.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (stamp_file.is_file() and stamp_file.read_text() == stamp):
                _generate(stamp)
    except PermissionError as err:
        raise PermissionError(f"cannot build the gRPC stubs in {_OUT} ({err.strerror}). To fix: run "
                              "`python -m isthmus._proto` once as the user that installed isthmus.") from None
    importlib.invalidate_caches()


_CACHE: dict[str, ModuleType] = {}


def load(name: str) -> ModuleType:
    """Generated module `name` of isthmus.v1, e.g. `load("control_plane_pb2_grpc")`."""
    if name not in _CACHE:
        _ensure_generated()
        _CACHE[name] = importlib.import_module(f"{_IMPORT_PREFIX}isthmus.v1.{name}")
    return _CACHE[name]


def encode_tensor(array: Any, *, arrow: bool = False) -> Any:
    """An `isthmus.v1.Tensor` holding `array` (numpy or torch), raw or as Arrow IPC."""
    pb = load("tensor_pb2")
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    array = np.ascontiguousarray(array)
    if array.dtype.name not in _DTYPES:
        raise TensorDecodeError(f"dtype {array.dtype.name!r} is not supported. "
                                f"To fix: convert the tensor to one of {', '.join(_DTYPES)}.")
    if not arrow:
        return pb.Tensor(encoding=pb.TENSOR_ENCODING_RAW, dtype=array.dtype.name,
                         shape=list(array.shape), data=array.tobytes())
    import pyarrow as pa

    flat = pa.array(array.reshape(-1))
    batch = pa.record_batch([flat], names=["tensor"])
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return pb.Tensor(encoding=pb.TENSOR_ENCODING_ARROW_IPC, dtype=array.dtype.name,
                     shape=list(array.shape), data=sink.getvalue().to_pybytes())


def decode_tensor(tensor: Any, *, max_bytes: int = MAX_TENSOR_BYTES) -> np.ndarray:
    """The numpy array in an `isthmus.v1.Tensor`; `TensorDecodeError` naming the bad field otherwise."""
    pb = load("tensor_pb2")
    dtype_name = tensor.dtype
    if dtype_name not in _DTYPES:
        raise TensorDecodeError(f"Tensor.dtype {dtype_name[:40]!r} is not supported. "
                                f"To fix: send one of {', '.join(_DTYPES)}.")
    shape = list(tensor.shape)
    if len(shape) > _MAX_DIMS or any(d < 0 for d in shape):
        raise TensorDecodeError(f"Tensor.shape {shape[:_MAX_DIMS + 1]} is invalid. "
                                f"To fix: send at most {_MAX_DIMS} non-negative dimensions.")
    dtype = np.dtype(dtype_name)
    count, bound = 1, 1
    for d in shape:
        count *= d
        bound *= max(d, 1)  # a zero dimension must not hide huge others (numpy rejects those shapes)
        if bound * dtype.itemsize > max_bytes:
            raise TensorDecodeError(f"Tensor.shape {shape} needs more than {max_bytes} bytes. "
                                    "To fix: send a smaller tensor or raise the server's limit.")
    if tensor.encoding == pb.TENSOR_ENCODING_RAW:
        if len(tensor.data) != count * dtype.itemsize:
            raise TensorDecodeError(f"Tensor.data has {len(tensor.data)} bytes but shape {shape} of "
                                    f"{dtype_name} needs {count * dtype.itemsize}. To fix: send "
                                    "row-major bytes that match dtype and shape.")
        return np.frombuffer(tensor.data, dtype=dtype).reshape(shape)
    if tensor.encoding == pb.TENSOR_ENCODING_ARROW_IPC:
        return _decode_arrow(tensor.data, dtype, shape, count)
    raise TensorDecodeError(f"Tensor.encoding {tensor.encoding} is unknown. "
                            "To fix: use TENSOR_ENCODING_RAW or TENSOR_ENCODING_ARROW_IPC.")


def _decode_arrow(data: bytes, dtype: np.dtype, shape: list[int], count: int) -> np.ndarray:
    import pyarrow as pa

    try:
        table = pa.ipc.open_stream(pa.py_buffer(data)).read_all()
        # the reader checks the framing only: buffers that do not fit their offsets or lengths crash a later
        # read in C++ (a fuzzing run died of SIGSEGV on one), so every buffer is checked before any is read
        table.validate(full=True)
    except (pa.ArrowException, OSError, ValueError) as err:
        raise TensorDecodeError(f"Tensor.data is not a valid Arrow IPC stream ({str(err)[:120]}). "
                                "To fix: write one record batch with pyarrow.ipc.new_stream.") from None
    if table.num_columns != 1 or table.num_rows != count:
        raise TensorDecodeError(f"Arrow Tensor.data holds {table.num_columns} columns x {table.num_rows} "
                                f"rows; shape {shape} needs 1 column x {count} rows. To fix: send the "
                                "flattened tensor as a single column.")
    try:
        column = table.column(0)
    except (ValueError, pa.ArrowException) as err:  # e.g. a column name that is not UTF-8 (found by fuzzing)
        raise TensorDecodeError(f"Arrow Tensor.data has an unreadable schema ({str(err)[:80]}). To fix: write "
                                "one record batch with pyarrow.ipc.new_stream.") from None
    if column.null_count:
        raise TensorDecodeError("Arrow Tensor.data contains nulls. To fix: send a dense tensor.")
    try:
        flat = column.to_numpy().astype(dtype, casting="same_kind")
    except (TypeError, ValueError, IndexError, pa.ArrowException) as err:
        raise TensorDecodeError(f"Arrow column of type {column.type} does not match dtype {dtype.name} "
                                f"({str(err)[:80]}). To fix: send a column of the declared dtype.") from None
    return flat.reshape(shape)


if __name__ == "__main__":  # `python -m isthmus._proto`: build the stubs now (e.g. right after install)
    for _name in ("tensor_pb2", "inference_pb2_grpc", "control_plane_pb2_grpc"):
        load(_name)
    print(f"gRPC stubs ready in {_OUT}")
