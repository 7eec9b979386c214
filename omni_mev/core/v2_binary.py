"""The Open Inference Protocol's binary tensor data extension: framing and decoding, nothing of the model.

A request whose `Inference-Header-Content-Length` header is N carries its JSON
in the body's first N bytes and, after it, the data of every input whose
`parameters.binary_data_size` is set, in input order: little-endian, row major,
no padding; BOOL one byte per element; BYTES a 4-byte little-endian length
before each element. An answer carries binary outputs the same way, when the
request's `parameters.binary_data_output` is true (what tritonclient sends when
it names no outputs) or an output's `parameters.binary_data` is.
"""
from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from omni_mev.errors import OmniMevError

EXTENSION = "binary_tensor_data"
HEADER = "Inference-Header-Content-Length"
ENVIRON_KEY = "HTTP_INFERENCE_HEADER_CONTENT_LENGTH"
BINARY_SIZE = "binary_data_size"
CONTENT_TYPE = "application/octet-stream"
# Fixed-width datatypes as numpy reads them from the wire (little-endian).
WIRE_DTYPES: dict[str, np.dtype[Any]] = {"FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"), "BOOL": np.dtype("u1"),
                                         "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8")}
_LENGTH = struct.Struct("<I")


class BinaryTensorError(OmniMevError):
    """The binary part of a request does not match what its JSON says."""

    status = 400
    code = "bad_request"


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """(the JSON, the binary data) of a request body."""
    if header_length is None:
        return body, b""
    try:
        length = int(header_length)
    except ValueError:
        raise BinaryTensorError(f"{HEADER} {header_length!r} is not a number.") from None
    if not 0 < length <= len(body):
        raise BinaryTensorError(f"{HEADER} is {length}; the body has {len(body)} bytes.")
    return body[:length], body[length:]


def attach_binary_inputs(inputs: Sequence[dict[str, Any]], data: bytes) -> None:
    """Each input with `binary_data_size` gets its decoded values as `data` (a numpy array, or a list of bytes
    for BYTES); the sizes must account for every byte."""
    offset = 0
    for tensor in inputs:
        size = (tensor.get("parameters") or {}).get(BINARY_SIZE)
        if size is None:
            continue
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise BinaryTensorError(f"Input '{tensor['name']}' has {BINARY_SIZE} {size!r}; it must be a byte count.")
        if "data" in tensor:
            raise BinaryTensorError(f"Input '{tensor['name']}' has both JSON data and {BINARY_SIZE}; give one.")
        if offset + size > len(data):
            raise BinaryTensorError(f"Input '{tensor['name']}' needs {size} bytes of binary data; "
                                    f"{len(data) - offset} are left.")
        tensor["data"] = decode(tensor, data[offset:offset + size])
        offset += size
    if offset != len(data):
        raise BinaryTensorError(f"The body has {len(data) - offset} bytes of binary data that no input's "
                                f"{BINARY_SIZE} accounts for.")


def decode(tensor: Mapping[str, Any], raw: bytes) -> np.ndarray | list[bytes]:
    """One input's binary data as its datatype says."""
    datatype, shape = tensor["datatype"], tensor["shape"]
    count = int(np.prod(shape)) if shape else 1
    if datatype == "BYTES":
        return _decode_bytes(tensor["name"], raw, count)
    dtype = WIRE_DTYPES.get(datatype)
    if dtype is None:
        raise BinaryTensorError(f"Input '{tensor['name']}' has datatype {datatype!r}, which this server does not "
                                f"read as binary data; allowed: {', '.join([*WIRE_DTYPES, 'BYTES'])}.")
    if len(raw) != count * dtype.itemsize:
        raise BinaryTensorError(f"Input '{tensor['name']}' has {len(raw)} bytes of binary data; shape {shape} of "
                                f"{datatype} needs {count * dtype.itemsize}.")
    return np.frombuffer(raw, dtype=dtype)


def _decode_bytes(name: str, raw: bytes, count: int) -> list[bytes]:
    elements: list[bytes] = []
    offset = 0
    for _ in range(count):
        if offset + _LENGTH.size > len(raw):
            raise BinaryTensorError(f"Input '{name}' ends inside the length of element {len(elements)}.")
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += _LENGTH.size
        if offset + length > len(raw):
            raise BinaryTensorError(f"Input '{name}' ends inside element {len(elements)}.")
        elements.append(raw[offset:offset + length])
        offset += length
    if offset != len(raw):
        raise BinaryTensorError(f"Input '{name}' has {len(raw) - offset} bytes after its {count} elements.")
    return elements


def binary_outputs(parameters: Mapping[str, Any] | None, outputs: Sequence[Mapping[str, Any]] | None,
                   names: Sequence[str]) -> set[str]:
    """The outputs (of `names`, the ones answered) to send as binary data."""
    everything = bool((parameters or {}).get("binary_data_output", False))
    asked = {output["name"]: (output.get("parameters") or {}).get("binary_data") for output in outputs or []}
    return {name for name in names if (asked.get(name) if asked.get(name) is not None else everything)}


def encode(datatype: str, values: np.ndarray) -> bytes:
    """An output's values as binary data."""
    return np.ascontiguousarray(values, dtype=WIRE_DTYPES[datatype]).tobytes()
