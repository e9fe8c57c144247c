"""ModelInfo: what inspection reads from one model's own header, before it is registered.

Its `metadata` is what a registry entry keeps (appliance.model_entry.ModelMetadata); the
rest (path, format, backend, architecture, size) becomes the entry's own fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from appliance.model_entry import ModelMetadata


@dataclass(frozen=True)
class ModelInfo:
    """What a model file or folder is, read from its own header."""

    path: str
    format: str
    backend: str  # the format's default backend (appliance.capabilities)
    architecture: str
    architecture_source: str  # "metadata" or "filename"
    size_bytes: int
    metadata: ModelMetadata = field(default_factory=ModelMetadata)  # what a registry entry keeps

    def to_dict(self) -> dict[str, Any]:
        """Flat, for `appliance models inspect`: the header's model name is `name`."""
        head = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "metadata"}
        facts = self.metadata.to_json(every_key=True)
        return head | {"name": facts.pop("model_name")} | facts


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
