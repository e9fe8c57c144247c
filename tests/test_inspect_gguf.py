"""GGUF inspection on the real demo model, small written files, and corrupted ones."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from appliance.errors import (
    EmptyModelFile,
    ModelFileError,
    NotAModelFile,
    TruncatedModelFile,
)
from appliance.library.gguf_header import GGML_TYPE_SIZES, read_gguf_header
from appliance.library.inspect import inspect_model
from appliance.library.model_info import ModelInfo
from tests.helpers import write_gguf


def test_demo_model_metadata(demo_model: Path) -> None:
    info = inspect_model(demo_model)
    meta = info.metadata
    assert info.format == "gguf"
    assert info.architecture == "llama"
    assert info.architecture_source == "metadata"
    assert meta.parameters == 134_515_008
    assert meta.quantization == "Q4_1"
    assert meta.context_length == 8192
    assert meta.chat_template is True
    assert info.backend == "llama.cpp"
    assert meta.gguf_version == 3
    assert info.size_bytes == 98_362_432
    assert meta.tensor_count == 272


def test_written_gguf(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "tiny.gguf", "qwen2", name="Tiny Qwen", context=4096, file_type=15)
    info = inspect_model(path)
    meta = info.metadata
    assert (info.architecture, meta.model_name, meta.context_length) == ("qwen2", "Tiny Qwen", 4096)
    assert meta.quantization == "Q4_K_M"
    assert meta.parameters == 32 * 16 + 8 * 16
    assert meta.chat_template is True
    assert meta.notes == ()


def test_base_model_without_template_and_file_type(tmp_path: Path) -> None:
    tensors = {"a": np.ones((64, 4), dtype=np.float16), "b": np.ones((2,), dtype=np.float32)}
    path = write_gguf(tmp_path / "base.gguf", file_type=None, chat_template=None, tensors=tensors)
    info = inspect_model(path)
    meta = info.metadata
    assert meta.chat_template is False
    assert meta.quantization == "F16"  # the type holding most weights
    assert "No chat template is embedded: chat uses a plain-text fallback." in meta.notes


def test_architecture_falls_back_to_file_name(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "qwen-tiny.gguf", arch="")
    info = inspect_model(path)
    assert (info.architecture, info.architecture_source) == ("qwen2", "filename")


def test_type_table_matches_gguf_package() -> None:
    for qtype, sizes in gguf.GGML_QUANT_SIZES.items():
        assert GGML_TYPE_SIZES[int(qtype)] == sizes, qtype.name


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.gguf"
    path.write_bytes(b"")
    with pytest.raises(EmptyModelFile, match=r"^empty.gguf is empty \(0 bytes\). Copy the model"):
        inspect_model(path)


@pytest.mark.parametrize("keep", [3, 10, 200, 5_000, 1_000_000, 98_362_432 - 1])
def test_truncated_demo_model(demo_model: Path, tmp_path: Path, keep: int) -> None:
    path = tmp_path / "cut.gguf"
    with demo_model.open("rb") as src, path.open("wb") as dst:
        dst.write(src.read(keep))
    with pytest.raises(ModelFileError) as err:
        inspect_model(path)
    assert isinstance(err.value, TruncatedModelFile | NotAModelFile)
    message = str(err.value)
    assert message.startswith("cut.gguf: ")
    if keep > 4:
        assert isinstance(err.value, TruncatedModelFile)
        assert "truncated or still being copied" in message


def test_truncated_data_names_the_tensor(demo_model: Path, tmp_path: Path) -> None:
    path = tmp_path / "cut.gguf"
    with demo_model.open("rb") as src, path.open("wb") as dst:
        dst.write(src.read(98_362_432 - 1))
    with pytest.raises(TruncatedModelFile, match=r"Tensor '[^']+' ends at byte 98,362,432 but the"):
        inspect_model(path)


def test_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "noise.gguf"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(NotAModelFile, match="does not start with the GGUF magic number"):
        inspect_model(path)


def test_text_with_model_extension(tmp_path: Path) -> None:
    path = tmp_path / "readme.gguf"
    path.write_text("This is not a model, just text.\n" * 10)
    with pytest.raises(
        NotAModelFile, match=r"^readme.gguf: This file does not start with the GGUF"
    ):
        inspect_model(path)


def _header(version: int, n_tensors: int, n_kv: int) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv)


def test_absurd_tensor_count(tmp_path: Path) -> None:
    path = tmp_path / "absurd.gguf"
    path.write_bytes(_header(3, 2**60, 0) + b"\0" * 64)
    with pytest.raises(NotAModelFile, match=r"claims 1,152,921,504,606,846,976 tensors"):
        inspect_model(path)


def test_absurd_string_length(tmp_path: Path) -> None:
    path = tmp_path / "absurd.gguf"
    path.write_bytes(_header(3, 0, 1) + struct.pack("<Q", 2**62) + b"\0" * 64)
    with pytest.raises(NotAModelFile, match=r"claims a 4,611,686,018,427,387,904-byte string"):
        inspect_model(path)


def test_absurd_array_length(tmp_path: Path) -> None:
    key = b"general.tags"
    body = struct.pack("<Q", len(key)) + key + struct.pack("<IIQ", 9, 4, 2**40)
    path = tmp_path / "absurd.gguf"
    path.write_bytes(_header(3, 0, 1) + body)
    with pytest.raises(NotAModelFile, match=r"claims 1,099,511,627,776 items for 'general.tags'"):
        inspect_model(path)


def test_unknown_version(tmp_path: Path) -> None:
    path = tmp_path / "v9.gguf"
    path.write_bytes(_header(9, 0, 0))
    with pytest.raises(NotAModelFile, match="GGUF version 9 is unknown"):
        inspect_model(path)


def test_gguf_v1_header(tmp_path: Path) -> None:
    """Version 1 used 32-bit counts and lengths."""
    key, value = b"general.architecture", b"llama"
    kv = struct.pack("<I", len(key)) + key + struct.pack("<II", 8, len(value)) + value
    path = tmp_path / "old.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<III", 1, 0, 1) + kv)
    info = inspect_model(path)
    meta = info.metadata
    assert (meta.gguf_version, info.architecture, meta.parameters) == (1, "llama", 0)


def _inspect(path: Path) -> ModelInfo | ModelFileError:
    """What inspection gives: the info, or the user-facing error (anything else raises)."""
    try:
        return inspect_model(path)
    except ModelFileError as exc:
        return exc


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.integers(min_value=0, max_value=4), st.binary(max_size=512))
@example(version=3, data=bytes(16))  # no tensors, no metadata: a valid, empty header
@example(version=2, data=bytes(16) + b"junk")
@example(version=1, data=bytes(8))
def test_arbitrary_bytes_never_crash(tmp_path: Path, version: int, data: bytes) -> None:
    """Any bytes after the magic and a version (0 and 4 are unknown) are either refused
    with a message naming the file, or read into consistent metadata."""
    path = tmp_path / "fuzz.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<I", version) + data)
    outcome = _inspect(path)
    if isinstance(outcome, ModelFileError):
        assert str(outcome).startswith("fuzz.gguf: ")
        assert len(str(outcome)) < 400
        return
    assert version in (1, 2, 3) and outcome.metadata.gguf_version == version
    assert (outcome.format, outcome.size_bytes) == ("gguf", len(data) + 8)
    assert outcome.metadata.tensor_count is not None and 0 <= outcome.metadata.tensor_count <= len(
        data
    )
    assert outcome.metadata.parameters is not None and outcome.metadata.parameters >= 0
    if outcome.metadata.tensor_count == 0:
        assert outcome.metadata.parameters == 0
        assert (
            "The file has no tensors: it holds metadata only (a vocab file?)."
            in outcome.metadata.notes
        )


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.integers(min_value=0, max_value=4095), st.integers(min_value=0, max_value=255))
@example(offset=2687, value=0x55)  # the last byte of the tensor data
@example(offset=500, value=0x55)  # inside the first tensor's data
@example(offset=20, value=0xFF)  # the metadata count
def test_flipped_byte_in_small_gguf(tmp_path: Path, offset: int, value: int) -> None:
    """A flipped byte in the header is refused with a message naming the file, or read;
    one in the tensor data changes nothing that inspection reports."""
    path = write_gguf(tmp_path / "flip.gguf")
    original = inspect_model(path)
    data_offset = read_gguf_header(path).data_offset
    raw = bytearray(path.read_bytes())
    at = offset % len(raw)
    raw[at] = value
    path.write_bytes(bytes(raw))
    outcome = _inspect(path)
    if at >= data_offset:
        assert outcome == original
    elif isinstance(outcome, ModelFileError):
        assert str(outcome).startswith("flip.gguf: ")
    else:
        assert (outcome.format, outcome.size_bytes) == ("gguf", len(raw))
        assert outcome.metadata.tensor_count is not None and outcome.metadata.tensor_count <= len(
            raw
        )
        assert outcome.metadata.parameters is not None and outcome.metadata.parameters >= 0


def test_demo_model_geometry(demo_model: Path) -> None:
    info = inspect_model(demo_model)
    meta = info.metadata
    assert (meta.layers, meta.embedding, meta.heads, meta.kv_heads) == (30, 576, 9, 3)
