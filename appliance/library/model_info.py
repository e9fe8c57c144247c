"""ModelInfo: what inspection reads from one model's own header, before it is registered.

Inspection fills it in step by step; `metadata()` is the part a registry entry keeps
(appliance.model_entry.ModelMetadata, whose fields these mirror).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from appliance.model_entry import ModelMetadata


@dataclass
class ModelInfo:
    """Metadata of a model file or folder. Fields are None when the format lacks them."""

    path: str
    format: str
    backend: str
    architecture: str
    architecture_source: str  # "metadata" or "filename"
    size_bytes: int
    name: str | None = None
    parameters: int | None = None
    quantization: str | None = None
    dtype: str | None = None
    context_length: int | None = None
    chat_template: bool | None = None
    tokenizer: bool | None = None
    gguf_version: int | None = None
    ggml_variant: str | None = None
    shards: int | None = None
    tensor_count: int | None = None
    layers: int | None = None
    embedding: int | None = None
    heads: int | None = None
    kv_heads: int | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def metadata(self) -> ModelMetadata:
        """The header's facts as a registry entry stores them (`name` is `model_name`)."""
        values = {f.name: getattr(self, f.name, None) for f in fields(ModelMetadata)}
        return ModelMetadata(**values | {"model_name": self.name, "notes": tuple(self.notes)})


def guess_architecture(filename: str) -> str:
    """The seed's fallback when the header has no architecture: guess from the name."""
    name = filename.lower()
    if "qwen" in name:
        return "qwen2"
    if "deepseek" in name or "starcoder" in name:
        return "starcoder"
    if "mistral" in name or "mixtral" in name:
        return "mistral"
    return "llama"
