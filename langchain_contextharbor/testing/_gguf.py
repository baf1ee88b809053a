"""Read what ``/api/create`` needs from a GGUF file's header: its metadata and tensor shapes.

Why the stand-in parses GGUF at all: ``ollama create`` from a GGUF uploads the file as a
blob and then names it in ``files``; Ollama reads the architecture, context length, sizes
and quantisation from the header, and ``/api/show`` reports them. A stand-in that invented
them would let a test pass that real Ollama contradicts. Pure functions over bytes (the
stand-in hands over the uploaded body); only the header is read, never the tensor data.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

__all__ = ["GGUFError", "GGUFInfo", "is_gguf", "read_gguf"]

_MAGIC = b"GGUF"
# GGUF value types: struct format of the scalar ones (8 = string, 9 = array).
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q"}
_SCALARS.update({11: "<q", 12: "<d"})
# general.file_type -> Ollama's quantization_level (llama.cpp's LLAMA_FTYPE_* numbering).
_FILE_TYPES = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    32: "BF16",
}


class GGUFError(ValueError):
    """The bytes are not a GGUF file Ollama could read (its "supplied file was not in GGUF
    format", or a truncated header)."""


@dataclass
class GGUFInfo:
    """What a GGUF header says: metadata (arrays summarised by their length) and the
    parameter count summed over the tensor shapes."""

    metadata: dict[str, Any] = field(default_factory=dict)
    parameter_count: int = 0
    tensor_count: int = 0

    @property
    def architecture(self) -> str:
        """``general.architecture`` (``llama``, ``bert``, ...)."""
        return str(self.metadata.get("general.architecture", ""))

    def arch_value(self, key: str) -> Any:
        """``<architecture>.<key>``, e.g. ``context_length``; ``None`` when absent."""
        return self.metadata.get(f"{self.architecture}.{key}")

    @property
    def quantization_level(self) -> str:
        """Ollama's name of ``general.file_type`` (``Q4_K_M``; ``""`` when unknown)."""
        ft = self.metadata.get("general.file_type")
        return _FILE_TYPES.get(ft, "") if isinstance(ft, int) else ""


def is_gguf(data: bytes) -> bool:
    """Whether ``data`` starts like a GGUF file (``ggml.DetectContentType``)."""
    return data[:4] == _MAGIC


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise GGUFError("unexpected EOF in GGUF header")
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return value

    def string(self) -> str:
        n = self.take("<Q")
        if self.pos + n > len(self.data):
            raise GGUFError("unexpected EOF in GGUF header")
        raw = self.data[self.pos : self.pos + n]
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def value(self, vtype: int) -> Any:
        if vtype in _SCALARS:
            return self.take(_SCALARS[vtype])
        if vtype == 8:
            return self.string()
        if vtype == 9:
            item_type, count = self.take("<I"), self.take("<Q")
            if item_type in _SCALARS:  # skip the items, keep the length
                size = struct.calcsize(_SCALARS[item_type]) * count
                if self.pos + size > len(self.data):
                    raise GGUFError("unexpected EOF in GGUF header")
                self.pos += size
            else:
                for _ in range(count):
                    self.value(item_type)
            return count
        raise GGUFError(f"unknown GGUF value type {vtype}")


def read_gguf(data: bytes) -> GGUFInfo:
    """Parse the header of a GGUF file (versions 2 and 3). Raises :class:`GGUFError`."""
    if not is_gguf(data):
        raise GGUFError("supplied file was not in GGUF format")
    r = _Reader(data)
    r.pos = 4
    version = r.take("<I")
    if version not in (2, 3):
        raise GGUFError(f"unsupported GGUF version {version}")
    tensors, kvs = r.take("<Q"), r.take("<Q")
    info = GGUFInfo(tensor_count=tensors)
    for _ in range(kvs):
        key = r.string()
        info.metadata[key] = r.value(r.take("<I"))
    for _ in range(tensors):
        r.string()  # name
        dims = [r.take("<Q") for _ in range(r.take("<I"))]
        r.take("<I")  # type
        r.take("<Q")  # offset
        count = 1
        for d in dims:
            count *= d
        info.parameter_count += count
    return info
