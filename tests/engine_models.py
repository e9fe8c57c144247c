"""Real models for engine tests, built from the demo GGUF (no network needed)."""

from __future__ import annotations

import os
import random
import socket
import struct
import urllib.request
from collections.abc import Callable
from pathlib import Path

import gguf

from appliance.engine.llama_server import LlamaServer, ServerOptions
from appliance.library.library import Library


def gguf_without_template(source: Path, target: Path) -> Path:
    """A copy of a GGUF with its chat template removed: a 'base model' for the fallback."""
    reader = gguf.GGUFReader(source)
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    writer = gguf.GGUFWriter(target, arch=arch, endianess=reader.endianess)
    for field in reader.fields.values():
        name = field.name
        if name == gguf.Keys.General.ARCHITECTURE or name.startswith("GGUF."):
            continue
        if name.startswith(gguf.Keys.Tokenizer.CHAT_TEMPLATE):
            continue
        value_type = field.types[0]
        sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), value_type, sub_type=sub_type)
    for tensor in reader.tensors:
        writer.add_tensor_info(tensor.name, tensor.data.shape, tensor.data.dtype,
                               tensor.data.nbytes, tensor.tensor_type)  # fmt: skip
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor in reader.tensors:
        writer.write_tensor_data(tensor.data, tensor_endianess=reader.endianess)
    writer.close()
    return target


def tiny_hf_model(demo: Path, folder: Path, *, chat_template: bool = True) -> Path:
    """A 2-layer random-weight Llama in safetensors with the demo model's real tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(demo.parent, gguf_file=demo.name)
    if not chat_template:
        tokenizer.chat_template = None
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    if not chat_template:
        (folder / "chat_template.jinja").unlink(missing_ok=True)
    return folder


def register_demo(library: Library, demo: Path, name: str | None = None) -> str:
    """Register the demo GGUF where it is; return its id."""
    return library.register(demo, external=True, name=name).entry.id


class LanServer(LlamaServer):
    """llama.cpp's server as an OpenAI-compatible server on the LAN would run it: on a
    loopback TCP port (`url`), with an API key, serving `model` under the name `alias`.

    LlamaServer's start (retried without a CPU variant that crashes, llama.cpp's reason
    when it fails) and stop, with its Unix socket replaced by `--host 127.0.0.1 --port`
    (llama.cpp takes the last of a repeated option).
    """

    def __init__(
        self, model: str | os.PathLike[str], *, alias: str, api_key: str, n_ctx: int = 2048,
        n_threads: int = 2,
    ) -> None:  # fmt: skip
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        tcp = ("--host", "127.0.0.1", "--port", str(self.port), "--api-key", api_key)
        options = ServerOptions(n_ctx=n_ctx, n_threads=n_threads, alias=alias, extra_args=tcp)
        super().__init__(model, options)

    def _healthy(self) -> bool:
        """/health on the TCP port instead of the Unix socket (no key; 503 while loading)."""
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False


# -- damaged GGUF files -----------------------------------------------------------
# GGUF: magic (4) | version u32 | tensor count u64 | metadata count u64 | metadata...
# each metadata entry: key (u64 length + bytes) | value type u32 | value
KEY = 24  # where the first metadata key's length is


def _set(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    return data[:offset] + struct.pack(fmt, value) + data[offset + struct.calcsize(fmt) :]


def _first_type_offset(data: bytes) -> int:
    (length,) = struct.unpack_from("<Q", data, KEY)
    return KEY + 8 + length


# Each kind of damage, applied to a good GGUF's bytes (tests/test_bad_gguf.py has all
# eleven through the host; other tests use some of them).
DAMAGE: dict[str, Callable[[bytes], bytes]] = {
    "empty": lambda d: b"",
    "random": lambda d: random.Random(4).randbytes(1 << 20),
    "truncated": lambda d: d[:-432],
    "half": lambda d: d[: len(d) // 2],
    "header-only": lambda d: d[:4096],
    "bad-magic": lambda d: b"GGUX" + d[4:],
    "bad-version": lambda d: _set(d, 4, "<I", 99),
    "huge-tensor-count": lambda d: _set(d, 8, "<Q", 1 << 62),
    "huge-metadata-count": lambda d: _set(d, 16, "<Q", 1 << 62),
    "huge-key-length": lambda d: _set(d, KEY, "<Q", 1 << 62),
    "bad-value-type": lambda d: _set(d, _first_type_offset(d), "<I", 99),
}
