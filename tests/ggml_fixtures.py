"""Tiny legacy GGML models, written byte by byte in the layouts ctransformers 0.2.27 reads.

Nothing here calls ctransformers: the files follow the source of the loaders it compiles.

- `write_gpt2_ggml`: ggml's examples/gpt-2 layout, read by ctransformers' `gpt2` model type
  (models/llms/gpt2.cc, `gpt2_model_load`; `starcoder` reads the same layout):
    u32 magic 0x67676d6c ("ggml");
    i32 n_vocab, n_ctx, n_embd, n_head, n_layer, ftype (+ 1000 x quantisation version
    in quantised files, as ggml's quantize tool writes it);
    i32 n_vocab again, then n_vocab x (u32 length, bytes);
    tensors until the end of the file: i32 n_dims, i32 name length, i32 ggml type,
    i32 ne[n_dims] (fastest-varying dimension first), the name, the data.
  The 2-D weights (wte, lm_head, each layer's c_attn, c_proj, c_fc and mlp c_proj) are in
  the ftype's type; wpe, the biases and the layer norms are F32, as the loader requires.
- `write_llama_ggjt`: llama.cpp's pre-GGUF files, read by ctransformers' `llama` model
  type for a file that is not GGUF (models/ggml/llama-ggml.cpp, `llama_file_loader`):
    u32 magic 0x67676d66 ("ggmf", version 1) or 0x67676a74 ("ggjt", versions 1-3),
    u32 version;
    u32 n_vocab, n_embd, n_mult, n_head, n_layer, n_rot, ftype;
    n_vocab x (u32 length, bytes, f32 score);
    tensors: u32 n_dims, u32 name length, u32 ggml type, u32 ne[n_dims], the name,
    (ggjt only) zero padding to a 32-byte file offset, the data.
  That llama.cpp hard-codes BOS = 1 and EOS = 2, and n_ff = n_mult-rounded 8/3 n_embd.
  It refuses quantised ftypes before ggjt v3, so Q4_0 and Q8_0 are written as ggjt v3.
  (The unversioned llama "ggml" layout is not written: real files of that layout carry
  no token scores, yet this loader reads a score after every token.)

The vocabulary holds every single byte (as real GGML vocabularies do), the special tokens
and five words. The weights are seeded random numbers (std 0.02, GPT-2's initialisation)
with one planted path, so that greedy decoding is known in advance: the embeddings of `:`
and of the WORDS are 10 x their own axis, and the output matrix maps `:` to WORDS[0] and
WORDS[i] to WORDS[i + 1], cycling. The random attention and MLP blocks are small beside
that path, so after a prompt that ends in "Assistant:" a correct loader emits WORDS[0],
WORDS[1], ... (logit about 11 against at most about 0.1 for any other token, end-of-text
included, so generation runs until max_tokens). A loader that put any of those tensors in
the wrong place, or read from a wrong offset, would not.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

WORDS = (" alpha", " bravo", " charlie", " delta", " echo")
BYTES = tuple(bytes([b]) for b in range(256))  # every byte, as real GGML vocabularies have
GGML_MAGIC, GGMF_MAGIC, GGJT_MAGIC = 0x67676D6C, 0x67676D66, 0x67676A74
# ggml tensor types and the file-level ftype each quantisation is written as.
TYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q8_0": 8}
FTYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q8_0": 7}
QNT_VERSION = 2  # ggml's GGML_QNT_VERSION when ctransformers 0.2.27 was built
GPT2_VOCAB = (b"<|endoftext|>", *BYTES, *(w.encode() for w in WORDS))
LLAMA_VOCAB = (b"<unk>", b"<s>", b"</s>", *BYTES, *(w.encode() for w in WORDS))


def expected_text(n_tokens: int) -> str:
    """What greedy decoding of any fixture returns after "...Assistant:" for n tokens."""
    return "".join(WORDS[i % len(WORDS)] for i in range(n_tokens))


def gpt2_parameters(n_vocab: int, n_ctx: int, n_embd: int, n_layer: int) -> int:
    """Parameters of a GPT-2 with a separate lm_head (wte, wpe, blocks, ln_f, lm_head)."""
    blocks = n_layer * (12 * n_embd**2 + 13 * n_embd)
    return 2 * n_vocab * n_embd + n_ctx * n_embd + blocks + 2 * n_embd


def _planted(
    vocab: tuple[bytes, ...], n_embd: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(token embeddings, output matrix), numpy shape (n_vocab, n_embd) both: random
    embeddings except `:` and WORDS, which get 10 x their own axis; the output matrix
    reads `:` -> WORDS[0] and WORDS[i] -> WORDS[i + 1] and is zero elsewhere."""
    planted = [vocab.index(b":"), *(vocab.index(word.encode()) for word in WORDS)]
    embeddings = (rng.standard_normal((len(vocab), n_embd)) * 0.02).astype(np.float32)
    output = np.zeros((len(vocab), n_embd), np.float32)
    for axis, token in enumerate(planted):
        embeddings[token] = 0.0
        embeddings[token, axis] = 10.0
    words = planted[1:]
    output[words[0], 0] = 1.0
    for axis, after in enumerate(words[1:] + words[:1], start=1):
        output[after, axis] = 1.0
    return embeddings, output


def _quantise(array: np.ndarray, kind: str) -> bytes:
    """ggml's reference quantisation (ggml.c quantize_row_*_reference), rows of 32."""
    flat = np.ascontiguousarray(array, np.float32).reshape(-1)
    if kind == "F32":
        return flat.tobytes()
    if kind == "F16":
        return flat.astype("<f2").tobytes()
    blocks = flat.reshape(-1, 32)
    if kind == "Q8_0":  # block_q8_0: fp16 d, int8 qs[32]
        d = np.abs(blocks).max(axis=1) / 127
        inverse = np.divide(1.0, d, out=np.zeros_like(d), where=d != 0)
        out = np.empty(len(blocks), dtype=[("d", "<f2"), ("qs", "i1", 32)])
        out["d"], out["qs"] = d, np.round(blocks * inverse[:, None])
        return out.tobytes()
    if kind == "Q4_0":  # block_q4_0: fp16 d, u8 qs[16] (low nibble j, high nibble j + 16)
        signed_max = blocks[np.arange(len(blocks)), np.abs(blocks).argmax(axis=1)]
        d = signed_max / -8
        inverse = np.divide(1.0, d, out=np.zeros_like(d), where=d != 0)
        q = np.minimum(15, (blocks * inverse[:, None] + 8.5).astype(np.int32)).astype(np.uint8)
        out = np.empty(len(blocks), dtype=[("d", "<f2"), ("qs", "u1", 16)])
        out["d"], out["qs"] = d, q[:, :16] | (q[:, 16:] << 4)
        return out.tobytes()
    raise ValueError(f"no writer for {kind}")


def _vocab_bytes(vocab: tuple[bytes, ...], *, scores: bool) -> bytes:
    score = struct.pack("<f", 0.0) if scores else b""
    return b"".join(struct.pack("<I", len(token)) + token + score for token in vocab)


def _tensor(name: str, array: np.ndarray, kind: str, offset: int = 0, align: bool = False) -> bytes:
    """One tensor record; `offset` is where it starts in the file (for ggjt's alignment)."""
    dims = tuple(reversed(array.shape))  # ggml lists the fastest-varying dimension first
    encoded = name.encode()
    head = struct.pack(f"<3i{len(dims)}i", len(dims), len(encoded), TYPES[kind], *dims) + encoded
    pad = b"\0" * (-(offset + len(head)) % 32) if align else b""
    return head + pad + _quantise(array, kind)


def write_gpt2_ggml(
    path: Path,
    kind: str = "F32",
    *,
    n_ctx: int = 128,
    n_embd: int = 128,
    n_head: int = 4,
    n_layer: int = 2,
    seed: int = 0,
) -> Path:
    """A GPT-2 in ggml's gpt-2 example layout (see the module docstring)."""
    rng = np.random.default_rng(seed)

    def rand(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    ones, zeros = np.ones(n_embd, np.float32), np.zeros(n_embd, np.float32)
    wte, lm_head = _planted(GPT2_VOCAB, n_embd, rng)
    tensors = [("model/wte", wte, kind), ("model/wpe", rand(n_ctx, n_embd), "F32"),
               ("model/ln_f/g", ones, "F32"), ("model/ln_f/b", zeros, "F32"),
               ("model/lm_head", lm_head, kind)]  # fmt: skip
    for i in range(n_layer):
        h = f"model/h{i}"
        tensors += [
            (f"{h}/ln_1/g", ones, "F32"), (f"{h}/ln_1/b", zeros, "F32"),
            (f"{h}/attn/c_attn/w", rand(3 * n_embd, n_embd), kind),
            (f"{h}/attn/c_attn/b", rand(3 * n_embd), "F32"),
            (f"{h}/attn/c_proj/w", rand(n_embd, n_embd), kind),
            (f"{h}/attn/c_proj/b", rand(n_embd), "F32"),
            (f"{h}/ln_2/g", ones, "F32"), (f"{h}/ln_2/b", zeros, "F32"),
            (f"{h}/mlp/c_fc/w", rand(4 * n_embd, n_embd), kind),
            (f"{h}/mlp/c_fc/b", rand(4 * n_embd), "F32"),
            (f"{h}/mlp/c_proj/w", rand(n_embd, 4 * n_embd), kind),
            (f"{h}/mlp/c_proj/b", rand(n_embd), "F32"),
        ]  # fmt: skip
    ftype = FTYPES[kind] + (QNT_VERSION * 1000 if kind.startswith("Q") else 0)
    n_vocab = len(GPT2_VOCAB)
    data = struct.pack("<I6i", GGML_MAGIC, n_vocab, n_ctx, n_embd, n_head, n_layer, ftype)
    data += struct.pack("<i", n_vocab) + _vocab_bytes(GPT2_VOCAB, scores=False)
    for name, array, tensor_kind in tensors:
        data += _tensor(name, array, tensor_kind)
    path.write_bytes(data)
    return path


def write_llama_ggjt(
    path: Path,
    kind: str = "Q4_0",
    *,
    variant: tuple[str, int] = ("ggjt", 3),
    n_embd: int = 128,
    n_mult: int = 32,
    n_head: int = 4,
    n_layer: int = 2,
    seed: int = 0,
) -> Path:
    """A llama in llama.cpp's ggmf/ggjt layout (see the module docstring)."""
    magic = {"ggmf": GGMF_MAGIC, "ggjt": GGJT_MAGIC}[variant[0]]
    align = variant[0] == "ggjt"
    rng = np.random.default_rng(seed)

    def rand(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    n_ff = ((2 * (4 * n_embd) // 3 + n_mult - 1) // n_mult) * n_mult
    ones = np.ones(n_embd, np.float32)
    embeddings, output = _planted(LLAMA_VOCAB, n_embd, rng)
    tensors = [("tok_embeddings.weight", embeddings, kind), ("norm.weight", ones, "F32"),
               ("output.weight", output, kind)]  # fmt: skip
    for i in range(n_layer):
        layer = f"layers.{i}"
        tensors += [(f"{layer}.attention_norm.weight", ones, "F32")]
        tensors += [(f"{layer}.attention.{w}.weight", rand(n_embd, n_embd), kind)
                    for w in ("wq", "wk", "wv", "wo")]  # fmt: skip
        tensors += [
            (f"{layer}.ffn_norm.weight", ones, "F32"),
            (f"{layer}.feed_forward.w1.weight", rand(n_ff, n_embd), kind),
            (f"{layer}.feed_forward.w2.weight", rand(n_embd, n_ff), kind),
            (f"{layer}.feed_forward.w3.weight", rand(n_ff, n_embd), kind),
        ]
    hparams = (len(LLAMA_VOCAB), n_embd, n_mult, n_head, n_layer, n_embd // n_head, FTYPES[kind])
    data = struct.pack("<II7I", magic, variant[1], *hparams)
    data += _vocab_bytes(LLAMA_VOCAB, scores=True)
    for name, array, tensor_kind in tensors:
        data += _tensor(name, array, tensor_kind, offset=len(data), align=align)
    path.write_bytes(data)
    return path


def llama_parameters(n_vocab: int, n_embd: int, n_mult: int, n_layer: int) -> int:
    """Parameters of the llama above: embeddings, output, norm and the blocks."""
    n_ff = ((2 * (4 * n_embd) // 3 + n_mult - 1) // n_mult) * n_mult
    blocks = n_layer * (4 * n_embd**2 + 3 * n_embd * n_ff + 2 * n_embd)
    return 2 * n_vocab * n_embd + n_embd + blocks
