"""Safetensors-like files for tests, examples and benchmarks, without numpy or torch: an 8-byte
little-endian header length, a JSON table of each tensor's dtype, shape and data offsets, the data."""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping


def safetensors_bytes(tensors: Mapping[str, bytes], *, dtype: str = "U8") -> bytes:
    """A safetensors file of 1-D tensors of `dtype` ("U8": one byte each), in the order given."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, data in tensors.items():
        header[name] = {"dtype": dtype, "shape": [len(data)], "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    table = json.dumps(header, separators=(",", ":")).encode()
    table += b" " * (-len(table) % 8)  # the format pads the header to a multiple of 8 bytes
    return struct.pack("<Q", len(table)) + table + b"".join(tensors.values())


def write_safetensors(path: str, tensors: Mapping[str, bytes]) -> int:
    """Write `safetensors_bytes(tensors)` to `path`; returns its size."""
    data = safetensors_bytes(tensors)
    with open(path, "wb") as file:
        file.write(data)
    return len(data)
