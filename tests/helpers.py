"""Builders for small real model files used by the tests."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import gguf
import numpy as np
from safetensors.numpy import save_file


def write_gguf(
    path: Path,
    arch: str = "llama",
    *,
    name: str | None = "tiny",
    context: int | None = 2048,
    file_type: int | None = 3,
    chat_template: str | None = "{% for m in messages %}{{ m.content }}{% endfor %}",
    tensors: dict[str, np.ndarray] | None = None,
) -> Path:
    """A valid GGUF v3 file written with the `gguf` package."""
    writer = gguf.GGUFWriter(str(path), arch)
    if name:
        writer.add_name(name)
    if context:
        writer.add_context_length(context)
    if file_type is not None:
        writer.add_file_type(file_type)
    if chat_template:
        writer.add_chat_template(chat_template)
    for tname, array in (tensors or default_tensors()).items():
        writer.add_tensor(tname, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def default_tensors() -> dict[str, np.ndarray]:
    return {
        "token_embd.weight": np.ones((32, 16), dtype=np.float32),
        "output.weight": np.ones((8, 16), dtype=np.float16),
    }


def write_safetensors(path: Path, tensors: dict[str, np.ndarray] | None = None) -> Path:
    save_file(tensors or {"w": np.zeros((4, 8), dtype=np.float16)}, str(path))
    return path


def make_hf_folder(
    folder: Path,
    *,
    sharded: bool = False,
    chat_template: bool = True,
    model_type: str = "llama",
) -> Path:
    """A small Hugging Face folder: config, tokenizer files and safetensors weights."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": model_type,
              "max_position_embeddings": 1024, "torch_dtype": "float16"}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {}}))
    tok_config = {"chat_template": "{{ messages }}"} if chat_template else {}
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_config))
    if sharded:
        write_safetensors(folder / "model-00001-of-00002.safetensors",
                          {"a": np.zeros((10, 10), dtype=np.float16)})  # fmt: skip
        write_safetensors(folder / "model-00002-of-00002.safetensors",
                          {"b": np.zeros((5, 4), dtype=np.float16)})  # fmt: skip
        index = {
            "metadata": {},
            "weight_map": {
                "a": "model-00001-of-00002.safetensors",
                "b": "model-00002-of-00002.safetensors",
            },
        }
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    else:
        write_safetensors(folder / "model.safetensors",
                          {"a": np.zeros((10, 10), dtype=np.float16)})  # fmt: skip
    return folder


def write_ggjt(path: Path, version: int = 3, ftype: int = 2) -> Path:
    """A legacy GGML (ggjt) header with llama hyper-parameters, then some bytes."""
    header = struct.pack("<II", 0x67676A74, version)
    header += struct.pack("<7i", 32000, 4096, 256, 32, 32, 128, ftype)
    path.write_bytes(header + b"\0" * 1024)
    return path


def slow_copy(src: Path, dst: Path, chunks: int = 12, pause: float = 0.25) -> float:
    """Copy src to dst in `chunks` pieces with a pause after each; return the end time."""
    data = src.read_bytes()
    step = -(-len(data) // chunks)
    with dst.open("wb") as fh:
        for start in range(0, len(data), step):
            fh.write(data[start : start + step])
            fh.flush()
            time.sleep(pause)
    return time.monotonic()
