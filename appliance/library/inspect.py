"""Given a path, return real metadata read from the file's own header.

One function, `inspect_model`, maps any path to a ModelInfo or raises a typed
ModelFileError whose message tells the user what is wrong and what to do:

- GGUF (.gguf): architecture, name, parameters, quantisation, context, chat template.
- legacy GGML (.bin with ggml/ggmf/ggjt magic): variant, quantisation, and the
  hyper-parameters and tensor table of llama.cpp's layouts or of ggml's gpt-2 layout
  (gpt2/starcoder, which also records the context length).
- pickled PyTorch weights (.bin/.pt/.pth/.ckpt): refused, since loading runs code.
- single .safetensors files: dtype and parameter count.
- Hugging Face folders: config.json, tokenizer, chat template, sharded weights.
"""

from __future__ import annotations

import json
import os
import struct
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

from appliance.capabilities import default_backend
from appliance.errors import (
    EmptyModelFile,
    ModelFileError,
    NotAModelFile,
    TruncatedModelFile,
    UnsafePickleFile,
    UnsupportedModel,
)
from appliance.library.gguf_header import (
    FILE_TYPE_NAMES,
    GGML_TYPE_NAMES,
    GGML_TYPE_SIZES,
    GGUFHeader,
    read_gguf_header,
)
from appliance.library.model_info import ModelInfo, guess_architecture
from appliance.model_entry import ModelMetadata

MODEL_SUFFIXES = (".gguf", ".bin", ".safetensors")
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl")
MAX_SAFETENSORS_HEADER = 100 << 20
MAX_JSON_FILE = 64 << 20

_GGML_MAGICS = {0x67676D6C: "ggml", 0x67676D66: "ggmf", 0x67676A74: "ggjt"}
# Legacy llama.cpp ftype -> name (GGML era).
_GGML_FTYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 4: "Q4_1_SOME_F16", 7: "Q8_0",
                8: "Q5_0", 9: "Q5_1"}  # fmt: skip
_PICKLE_ADVICE = (
    "Loading a pickle runs arbitrary code, so this app refuses it. Convert the model to "
    "safetensors (transformers' save_pretrained(..., safe_serialization=True)) or to GGUF "
    "(llama.cpp's convert_hf_to_gguf.py) on a trusted machine, then import that."
)


def inspect_model(path: Path) -> ModelInfo:
    """Read a model file or Hugging Face folder's header into a ModelInfo."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path} does not exist. Check the path and try again.")
    if path.is_dir():
        return _inspect_folder(path)
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise UnsafePickleFile(f"{path.name} is a pickled PyTorch checkpoint. {_PICKLE_ADVICE}")
    if suffix not in MODEL_SUFFIXES:
        raise UnsupportedModel(
            f"{path.name}: unknown model file type {suffix or '(no extension)'!r}. This app "
            "loads .gguf, legacy GGML .bin, and Hugging Face folders with .safetensors."
        )
    if path.stat().st_size == 0:
        raise EmptyModelFile(f"{path.name} is empty (0 bytes). Copy the model again.")
    if suffix == ".gguf":
        return _inspect_gguf(path)
    if suffix == ".bin":
        return _inspect_bin(path)
    return _inspect_safetensors_file(path)


def _inspect_gguf(path: Path) -> ModelInfo:
    try:
        header = read_gguf_header(path)
    except ModelFileError as exc:
        raise type(exc)(f"{path.name}: {exc}") from None
    meta = header.metadata
    arch = meta.get("general.architecture")
    known = isinstance(arch, str) and bool(arch)
    template = bool(meta.get("tokenizer.chat_template"))
    notes = []
    if not header.tensors:
        notes.append("The file has no tensors: it holds metadata only (a vocab file?).")
    if not template:
        notes.append("No chat template is embedded: chat uses a plain-text fallback.")
    return _info(
        path,
        "gguf",
        arch if known else guess_architecture(path.name),
        "metadata" if known else "filename",
        header.file_size,
        notes,
        model_name=_str_or_none(meta.get("general.name")),
        parameters=sum(t.elements for t in header.tensors),
        quantization=_gguf_quantization(header),
        context_length=_int_or_none(meta.get(f"{arch}.context_length")),
        chat_template=template,
        gguf_version=header.version,
        tensor_count=len(header.tensors),
        layers=_int_or_none(meta.get(f"{arch}.block_count")),
        embedding=_int_or_none(meta.get(f"{arch}.embedding_length")),
        heads=_int_or_none(meta.get(f"{arch}.attention.head_count")),
        kv_heads=_int_or_none(meta.get(f"{arch}.attention.head_count_kv")),
    )


def _info(
    path: Path, fmt: str, architecture: str, source: str, size: int, notes: list[str],
    **facts: Any,
) -> ModelInfo:  # fmt: skip
    """The ModelInfo of a file of format fmt; facts are ModelMetadata's fields."""
    return ModelInfo(
        path=str(path), format=fmt, backend=default_backend(fmt), architecture=architecture,
        architecture_source=source, size_bytes=size,
        metadata=ModelMetadata(**facts, notes=tuple(notes)),
    )  # fmt: skip


def _gguf_quantization(header: GGUFHeader) -> str | None:
    file_type = header.metadata.get("general.file_type")
    if isinstance(file_type, int) and file_type in FILE_TYPE_NAMES:
        return FILE_TYPE_NAMES[file_type]
    # No (known) file type: name the tensor type that holds most of the weights.
    weights: Counter[int] = Counter()
    for tensor in header.tensors:
        weights[tensor.ggml_type] += tensor.elements
    if not weights:
        return None
    top = weights.most_common(1)[0][0]
    return GGML_TYPE_NAMES.get(top, f"type {top}")


def _inspect_bin(path: Path) -> ModelInfo:
    with path.open("rb") as fh:
        head = fh.read(64)
    if head.startswith(b"PK\x03\x04") and _is_torch_zip(path):
        raise UnsafePickleFile(f"{path.name} is a PyTorch checkpoint (pickle). {_PICKLE_ADVICE}")
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        raise UnsafePickleFile(f"{path.name} is a pickle file. {_PICKLE_ADVICE}")
    if len(head) < 4:
        raise TruncatedModelFile(f"{path.name} is only {len(head)} bytes: not a model.")
    magic = struct.unpack("<I", head[:4])[0]
    if magic not in _GGML_MAGICS:
        raise NotAModelFile(
            f"{path.name} is neither a legacy GGML model (ggml/ggmf/ggjt magic) nor a "
            "PyTorch checkpoint. Check that the file is a model and copied completely."
        )
    return _ggml_info(path, _GGML_MAGICS[magic], head)


def _ggml_info(path: Path, variant: str, head: bytes) -> ModelInfo:
    if variant == "ggml":
        gpt2 = _gpt2_layout_info(path)
        if gpt2 is not None:
            return gpt2
    offset = 4
    version = None
    if variant != "ggml":
        version = struct.unpack("<I", head[4:8])[0]
        offset = 8
    fields = head[offset : offset + 28]
    if len(fields) < 28:
        raise TruncatedModelFile(f"{path.name}: the GGML header ends early; copy it again.")
    n_vocab, n_embd, _mult, n_head, n_layer, n_rot, ftype = struct.unpack("<7i", fields)
    facts: dict[str, Any] = {
        "ggml_variant": variant if version is None else f"{variant} v{version}",
        "quantization": _GGML_FTYPES.get(ftype & 0xFFFF),
    }
    notes = [
        "Legacy GGML headers do not record the architecture or the context length; the "
        "architecture is guessed from the file name. Converting to GGUF is recommended."
    ]
    # llama.cpp's own layouts (n_rot = n_embd / n_head); other ggml examples differ.
    if (
        0 < n_embd < 1 << 20
        and 0 < n_layer < 1 << 12
        and 0 < n_head < 1 << 12
        and (n_rot * n_head == n_embd or variant != "ggml")
    ):
        notes.append(
            f"llama hyper-parameters: vocab {n_vocab}, embedding {n_embd}, "
            f"{n_head} heads, {n_layer} layers."
        )
        facts.update(layers=n_layer, embedding=n_embd, heads=n_head)
        if variant != "ggml":  # ggmf v1, ggjt v1-3: vocabulary with scores
            with path.open("rb") as fh:
                fh.seek(offset + 28)
                tensors = _ggml_tensor_table(fh, n_vocab, scores=True, align=variant == "ggjt")
            if tensors is not None:
                facts.update(_tensor_facts(tensors))
    return _info(path, "ggml", guess_architecture(path.name), "filename", path.stat().st_size,
                 notes, **facts)  # fmt: skip


def _tensor_facts(tensors: list[tuple[str, int]]) -> dict[str, int]:
    return {"parameters": sum(n for _name, n in tensors), "tensor_count": len(tensors)}


def _gpt2_layout_info(path: Path) -> ModelInfo | None:
    """ggml's gpt-2 example layout (read by ctransformers' gpt2 and starcoder): i32
    n_vocab, n_ctx, n_embd, n_head, n_layer, ftype, then n_vocab again, the vocabulary
    and tensors named model/...; None when the file is not laid out so."""
    with path.open("rb") as fh:
        fh.seek(4)
        raw = fh.read(28)
        if len(raw) < 28:
            return None
        n_vocab, n_ctx, n_embd, n_head, n_layer, ftype, again = struct.unpack("<7i", raw)
        if again != n_vocab or not (
            0 < n_vocab < 1 << 22 and 0 < n_ctx < 1 << 22 and 0 < n_embd < 1 << 20
            and 0 < n_head <= n_embd and 0 < n_layer < 1 << 12
        ):  # fmt: skip
            return None
        start = fh.tell()
        first = _ggml_tensor_table(fh, n_vocab, scores=False, align=False, first_only=True)
        if not first or not first[0][0].startswith("model/"):
            return None
        fh.seek(start)
        tensors = _ggml_tensor_table(fh, n_vocab, scores=False, align=False)
    starcoder = guess_architecture(path.name) == "starcoder"
    notes = [
        f"ggml gpt-2 layout: vocab {n_vocab}, context {n_ctx}, embedding {n_embd}, "
        f"{n_head} heads, {n_layer} layers. GPT-2 and StarCoder files share this layout; "
        "the file name tells them apart. Converting to GGUF is recommended."
    ]
    if tensors is None:
        notes.append(
            "The tensor table does not end where the file does: the file may be truncated "
            "or use an old quantisation, so the parameter count is not known."
        )
    return _info(
        path,
        "ggml",
        "starcoder" if starcoder else "gpt2",
        "filename" if starcoder else "metadata",
        path.stat().st_size,
        notes,
        ggml_variant="ggml",
        quantization=_GGML_FTYPES.get(ftype % 1000),
        context_length=n_ctx,
        layers=n_layer,
        embedding=n_embd,
        heads=n_head,
        **(_tensor_facts(tensors) if tensors is not None else {}),
    )


def _ggml_tensor_table(
    fh: Any, n_vocab: int, *, scores: bool, align: bool, first_only: bool = False
) -> list[tuple[str, int]] | None:
    """Skip the vocabulary at the file position, then list (name, elements) of every
    tensor; None unless the table is well formed and ends exactly at the end of the file
    (so an unknown or old quantisation, or a truncated file, yields None)."""
    size = os.fstat(fh.fileno()).st_size
    for _ in range(n_vocab):
        raw = fh.read(4)
        if len(raw) < 4:
            return None
        length = struct.unpack("<I", raw)[0]
        if length > 4096 or fh.seek(length + (4 if scores else 0), 1) > size:
            return None
    tensors: list[tuple[str, int]] = []
    while fh.tell() < size:
        raw = fh.read(12)
        if len(raw) < 12:
            return None
        n_dims, name_len, ggml_type = struct.unpack("<3i", raw)
        if not (1 <= n_dims <= 4 and 0 < name_len <= 512) or ggml_type not in GGML_TYPE_SIZES:
            return None
        raw = fh.read(4 * n_dims + name_len)
        if len(raw) < 4 * n_dims + name_len:
            return None
        dims = struct.unpack(f"<{n_dims}i", raw[: 4 * n_dims])
        try:
            name = raw[4 * n_dims :].decode("utf-8")
        except UnicodeDecodeError:
            return None
        elements = 1
        for dim in dims:
            elements *= dim
        block, block_bytes = GGML_TYPE_SIZES[ggml_type]
        if min(dims) <= 0 or elements % block:
            return None
        tensors.append((name, elements))
        if first_only:
            return tensors
        if align:
            fh.seek(-fh.tell() % 32, 1)
        if fh.seek(elements // block * block_bytes, 1) > size:
            return None
    return tensors or None


def _is_torch_zip(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n.endswith("data.pkl") for n in zf.namelist())
    except zipfile.BadZipFile:
        return False


def read_safetensors_header(path: Path) -> tuple[dict[str, Any], int]:
    """Return (tensor table, parameter count) of a .safetensors file, bounds-checked."""
    size = path.stat().st_size
    if size == 0:
        raise EmptyModelFile(f"{path.name} is empty (0 bytes). Copy the model again.")
    with path.open("rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            raise TruncatedModelFile(f"{path.name} is too short to be a safetensors file.")
        length = struct.unpack("<Q", raw)[0]
        if length > MAX_SAFETENSORS_HEADER:
            raise NotAModelFile(
                f"{path.name} claims a {length:,}-byte safetensors header: it is corrupted "
                "or not a safetensors file."
            )
        if 8 + length > size:
            raise TruncatedModelFile(
                f"{path.name}: the safetensors header ends beyond the end of the file; the "
                "file is truncated or still being copied."
            )
        try:
            table = json.loads(fh.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise NotAModelFile(f"{path.name}: the safetensors header is not valid JSON.") from None
    if not isinstance(table, dict):
        raise NotAModelFile(f"{path.name}: the safetensors header is not a JSON object.")
    table.pop("__metadata__", None)
    params = 0
    for name, entry in table.items():
        shape, begin_end = _tensor_entry(path, name, entry)
        if 8 + length + begin_end[1] > size:
            raise TruncatedModelFile(
                f"{path.name}: tensor {name!r} ends beyond the end of the file; the file is "
                "truncated or still being copied."
            )
        count = 1
        for dim in shape:
            count *= dim
        params += count
    return table, params


def _tensor_entry(path: Path, name: str, entry: Any) -> tuple[list[int], list[int]]:
    ok = isinstance(entry, dict)
    shape = entry.get("shape") if ok else None
    offsets = entry.get("data_offsets") if ok else None
    if not (
        isinstance(shape, list)
        and all(isinstance(d, int) and d >= 0 for d in shape)
        and isinstance(offsets, list)
        and len(offsets) == 2
        and all(isinstance(o, int) and o >= 0 for o in offsets)
        and isinstance(entry.get("dtype"), str)
    ):
        raise NotAModelFile(f"{path.name}: tensor {name!r} has a malformed header entry.")
    return shape, offsets


def _dominant_dtype(table: dict[str, Any]) -> str | None:
    counts: Counter[str] = Counter()
    for entry in table.values():
        n = 1
        for dim in entry["shape"]:
            n *= dim
        counts[entry["dtype"]] += n
    return counts.most_common(1)[0][0] if counts else None


def _inspect_safetensors_file(path: Path) -> ModelInfo:
    table, params = read_safetensors_header(path)
    dtype = _dominant_dtype(table)
    notes = [
        "A single .safetensors file has no config.json or tokenizer: import the whole "
        "Hugging Face folder to chat with it."
    ]
    return _info(path, "safetensors", guess_architecture(path.name), "filename",
                 path.stat().st_size, notes, parameters=params, quantization=dtype,
                 dtype=dtype, tensor_count=len(table))  # fmt: skip


def _read_json(path: Path, what: str) -> Any:
    if path.stat().st_size > MAX_JSON_FILE:
        raise NotAModelFile(f"{path} is too large to be a {what}.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise NotAModelFile(
            f"{path.name} in {path.parent.name}/ is not valid JSON: {exc}."
        ) from None


def _inspect_folder(folder: Path) -> ModelInfo:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise UnsupportedModel(
            f"{folder.name}/ has no config.json, so it is not a Hugging Face model folder. "
            "Copy the whole folder as downloaded, or import a single .gguf file."
        )
    config = _read_json(config_path, "config.json")
    if not isinstance(config, dict):
        raise NotAModelFile(f"{folder.name}/config.json is not a JSON object.")
    shards = _weight_shards(folder)
    tables = [read_safetensors_header(shard) for shard in shards]
    model_type = config.get("model_type")
    known = isinstance(model_type, str) and bool(model_type)
    archs = config.get("architectures") or []
    dtype = _dominant_dtype({k: v for table, _ in tables for k, v in table.items()})
    quant = config.get("quantization_config")
    quantization = str(quant.get("quant_method", "quantized")) if isinstance(quant, dict) else dtype
    tokenizer = any(
        (folder / n).is_file()
        for n in ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model")
    )
    template = _folder_has_chat_template(folder)
    notes = []
    if not tokenizer:
        notes.append("No tokenizer files found: the transformers backend cannot load it.")
    if not template:
        notes.append("No chat template: chat uses a plain-text fallback.")
    return _info(
        folder,
        "hf-folder",
        model_type if known else guess_architecture(folder.name),
        "metadata" if known else "filename",
        sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()),
        notes,
        model_name=archs[0] if archs and isinstance(archs[0], str) else folder.name,
        parameters=sum(params for _, params in tables),
        quantization=quantization,
        dtype=dtype,
        context_length=_int_or_none(_config_value(config, "max_position_embeddings")),
        tokenizer=tokenizer,
        chat_template=template,
        shards=len(shards),
        tensor_count=sum(len(table) for table, _ in tables),
        layers=_int_or_none(_config_value(config, "num_hidden_layers", "n_layer")),
        embedding=_int_or_none(_config_value(config, "hidden_size", "n_embd")),
        heads=_int_or_none(_config_value(config, "num_attention_heads", "n_head")),
        kv_heads=_int_or_none(_config_value(config, "num_key_value_heads")),
    )


def _weight_shards(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        data = _read_json(index, "safetensors index")
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise NotAModelFile(f"{folder.name}/{index.name} has no weight_map.")
        names = sorted({str(v) for v in weight_map.values()})
        for name in names:
            shard = (folder / name).resolve()
            if shard.parent != folder.resolve():
                raise NotAModelFile(f"{index.name} names a shard outside the folder: {name!r}.")
            if not shard.is_file():
                raise TruncatedModelFile(
                    f"{folder.name}/ is missing the shard {name} listed in {index.name}: the "
                    "copy is incomplete. Copy the whole folder again."
                )
        return [folder / n for n in names]
    singles = sorted(folder.glob("*.safetensors"))
    if singles:
        return singles
    if any(folder.glob("*.bin")) or any(folder.glob("*.pt")) or any(folder.glob("*.pth")):
        raise UnsafePickleFile(
            f"{folder.name}/ holds only pickled PyTorch weights (.bin/.pt). {_PICKLE_ADVICE}"
        )
    raise UnsupportedModel(
        f"{folder.name}/ has a config.json but no .safetensors weights. Copy the weights too."
    )


def _folder_has_chat_template(folder: Path) -> bool:
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    config = folder / "tokenizer_config.json"
    if not config.is_file():
        return False
    data = _read_json(config, "tokenizer_config.json")
    return isinstance(data, dict) and bool(data.get("chat_template"))


def _config_value(config: dict[str, Any], *keys: str) -> Any:
    """The first of keys found in config.json or in its text_config."""
    text_config = config.get("text_config")
    for source in (config, text_config if isinstance(text_config, dict) else {}):
        for key in keys:
            if key in source:
                return source[key]
    return None


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None
