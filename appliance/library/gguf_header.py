"""A bounded reader for GGUF headers (versions 1-3): metadata and tensor table.

It reads only the header, never the tensor data, and checks every count and length
against the file's size before trusting it, so a doctored header cannot make it
allocate or loop without bound. It also checks that every tensor's data lies inside
the file, which is how a half-copied or truncated file is told apart from a good one.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from appliance.errors import NotAModelFile, TruncatedModelFile

MAGIC = b"GGUF"
MAX_TENSORS = 1 << 20
MAX_KV = 1 << 16
MAX_DIMS = 8
MAX_STRING = 64 << 20
MAX_ARRAY = 1 << 26
DEFAULT_ALIGNMENT = 32

# Keys whose (large) array values are not kept: only their length is recorded.
_SKIP_ARRAY_VALUES = ("tokenizer.ggml.",)

# ggml tensor type -> (elements per block, bytes per block), from ggml.h.
GGML_TYPE_SIZES: dict[int, tuple[int, int]] = {
    0: (1, 4),  # F32
    1: (1, 2),  # F16
    2: (32, 18),  # Q4_0
    3: (32, 20),  # Q4_1
    6: (32, 22),  # Q5_0
    7: (32, 24),  # Q5_1
    8: (32, 34),  # Q8_0
    9: (32, 40),  # Q8_1
    10: (256, 84),  # Q2_K
    11: (256, 110),  # Q3_K
    12: (256, 144),  # Q4_K
    13: (256, 176),  # Q5_K
    14: (256, 210),  # Q6_K
    15: (256, 292),  # Q8_K
    16: (256, 66),  # IQ2_XXS
    17: (256, 74),  # IQ2_XS
    18: (256, 98),  # IQ3_XXS
    19: (256, 50),  # IQ1_S
    20: (32, 18),  # IQ4_NL
    21: (256, 110),  # IQ3_S
    22: (256, 82),  # IQ2_S
    23: (256, 136),  # IQ4_XS
    24: (1, 1),  # I8
    25: (1, 2),  # I16
    26: (1, 4),  # I32
    27: (1, 8),  # I64
    28: (1, 8),  # F64
    29: (256, 56),  # IQ1_M
    30: (1, 2),  # BF16
    34: (256, 54),  # TQ1_0
    35: (256, 66),  # TQ2_0
    39: (32, 17),  # MXFP4
    40: (64, 36),  # NVFP4
    41: (128, 18),  # Q1_0
}

GGML_TYPE_NAMES: dict[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1",
    10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K",
    16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S",
    22: "IQ2_S", 23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64",
    29: "IQ1_M", 30: "BF16", 34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4", 40: "NVFP4", 41: "Q1_0",
}  # fmt: skip

# llama.cpp's `general.file_type` (enum llama_ftype) -> the name people use.
FILE_TYPE_NAMES: dict[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 4: "Q4_1_SOME_F16", 7: "Q8_0", 8: "Q5_0",
    9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S",
    15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS",
    21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S",
    27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16",
    36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4_MOE",
}  # fmt: skip

# GGUF value types: id -> struct format (scalars only).
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}  # fmt: skip
_STRING, _ARRAY = 8, 9


@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int

    @property
    def elements(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count

    def nbytes(self) -> int | None:
        sizes = GGML_TYPE_SIZES.get(self.ggml_type)
        if sizes is None:
            return None
        block, size = sizes
        return -(-self.elements // block) * size


@dataclass
class GGUFHeader:
    version: int
    metadata: dict[str, Any]
    array_lengths: dict[str, int]
    tensors: list[TensorInfo] = field(default_factory=list)
    data_offset: int = 0
    file_size: int = 0


class _Reader:
    def __init__(self, fh: BinaryIO, size: int, version: int = 3) -> None:
        self.fh = fh
        self.size = size
        self.version = version

    def take(self, n: int, what: str) -> bytes:
        pos = self.fh.tell()
        if n < 0 or pos + n > self.size:
            raise TruncatedModelFile(
                f"The GGUF header ends early (while reading {what} at byte {pos}): the file "
                "is truncated or still being copied. Copy it again from the original."
            )
        return self.fh.read(n)

    def scalar(self, fmt: str, what: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]

    def count(self, what: str) -> int:
        return self.scalar("<I" if self.version == 1 else "<Q", what)

    def string(self, what: str) -> str:
        length = self.count(f"the length of {what}")
        if length > MAX_STRING:
            raise NotAModelFile(
                f"The GGUF header claims a {length:,}-byte string for {what}, which is "
                "absurd: the file is corrupted or not a real GGUF model."
            )
        return self.take(length, what).decode("utf-8", errors="replace")

    def value(self, vtype: int, key: str, keep: bool = True) -> Any:
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype], f"the value of {key!r}")
        if vtype == _STRING:
            return self.string(f"the value of {key!r}")
        if vtype == _ARRAY:
            etype = self.scalar("<I", f"the array type of {key!r}")
            length = self.count(f"the array length of {key!r}")
            if length > MAX_ARRAY:
                raise NotAModelFile(
                    f"The GGUF header claims {length:,} items for {key!r} (the limit is "
                    f"{MAX_ARRAY:,}): the file is corrupted or not a real GGUF model."
                )
            items = [self.value(etype, key, keep) for _ in range(length)]
            return items if keep else length
        raise NotAModelFile(
            f"The GGUF header has an unknown value type {vtype} for {key!r}: the file is "
            "corrupted or written by a newer GGUF version than this app knows."
        )


def read_gguf_header(path: Path) -> GGUFHeader:
    """Parse a GGUF file's header. Raises ModelFileError subclasses on bad input."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        reader = _Reader(fh, size)
        if reader.take(4, "the magic number") != MAGIC:
            raise NotAModelFile("This file does not start with the GGUF magic number.")
        version = reader.scalar("<I", "the version")
        if version not in (1, 2, 3):
            raise NotAModelFile(
                f"GGUF version {version} is unknown (this app reads versions 1 to 3): the "
                "file is corrupted or from a much newer llama.cpp."
            )
        reader.version = version
        n_tensors = reader.count("the tensor count")
        n_kv = reader.count("the metadata count")
        _check_count(n_tensors, MAX_TENSORS, "tensors")
        _check_count(n_kv, MAX_KV, "metadata entries")
        metadata, lengths = _read_metadata(reader, n_kv)
        tensors = [_read_tensor(reader, i) for i in range(n_tensors)]
        alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise NotAModelFile(f"The GGUF alignment {alignment!r} is not a power of two.")
        data_offset = -(-fh.tell() // alignment) * alignment
    header = GGUFHeader(version, metadata, lengths, tensors, data_offset, size)
    _check_tensor_bounds(header)
    return header


def _check_count(value: int, limit: int, what: str) -> None:
    if value > limit:
        raise NotAModelFile(
            f"The GGUF header claims {value:,} {what} (the limit is {limit:,}): the file is "
            "corrupted or not a real GGUF model."
        )


def _read_metadata(reader: _Reader, n_kv: int) -> tuple[dict[str, Any], dict[str, int]]:
    metadata: dict[str, Any] = {}
    lengths: dict[str, int] = {}
    for index in range(n_kv):
        key = reader.string(f"metadata key #{index}")
        vtype = reader.scalar("<I", f"the type of {key!r}")
        keep = not key.startswith(_SKIP_ARRAY_VALUES)
        value = reader.value(vtype, key, keep)
        if vtype == _ARRAY and not keep:
            lengths[key] = value
        else:
            metadata[key] = value
            if vtype == _ARRAY:
                lengths[key] = len(value)
    return metadata, lengths


def _read_tensor(reader: _Reader, index: int) -> TensorInfo:
    name = reader.string(f"the name of tensor #{index}")
    n_dims = reader.scalar("<I", f"the dimensions of {name!r}")
    if n_dims > MAX_DIMS:
        raise NotAModelFile(f"Tensor {name!r} claims {n_dims} dimensions: the file is corrupted.")
    shape = tuple(reader.count(f"the shape of {name!r}") for _ in range(n_dims))
    ggml_type = reader.scalar("<I", f"the type of {name!r}")
    offset = reader.scalar("<Q", f"the offset of {name!r}")
    return TensorInfo(name, shape, ggml_type, offset)


def _check_tensor_bounds(header: GGUFHeader) -> None:
    available = header.file_size - header.data_offset
    for tensor in header.tensors:
        nbytes = tensor.nbytes()
        if nbytes is None:
            continue
        end = header.data_offset + tensor.offset + nbytes
        if tensor.offset + nbytes > available:
            raise TruncatedModelFile(
                f"Tensor {tensor.name!r} ends at byte {end:,}"
                f" but the file has only {header.file_size:,} bytes: the file is truncated "
                "or still being copied. Copy it again from the original."
            )
