"""ModelEntry: one model of the library, as models/registry.json stores it.

An entry is a frozen value. The library changes a model by storing a new entry
(`dataclasses.replace`) inside a registry transaction; the engine, the UI and the CLI
read entries and never change them.

The fields, in their order, are the keys of an entry in registry.json. `from_json`
validates a stored entry field by field (its declared type, and the rule in the field's
`metadata`) and `to_json` writes it back in the same shape, so a registry.json written
before this class existed loads unchanged and saves byte for byte as it was:
`problem` is written only when there is one, a local model's metadata lists every key
(null where the header has no value) and a remote model's only those it has, and keys
this version does not know are kept, after the known ones.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

from appliance import capabilities, sampling
from appliance.jsontypes import checker, describe

STATUSES = ("present", "missing", "damaged")
ARCHITECTURE_SOURCES = ("metadata", "filename", "user")
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,95}$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_URL_RE = re.compile(r"^https?://[^/\s]+(/\S*)?$")


def _rule(check: Callable[[Any], bool] | None, expected: str, **kwargs: Any) -> Any:
    """A field whose stored value must also pass check (said as `expected` when not)."""
    return field(metadata={"check": check, "expected": expected}, **kwargs)


@dataclass(frozen=True)
class ModelMetadata:
    """What the model's own header says; None where its format does not record it."""

    model_name: str | None = None  # the name in the header; a remote model: the server's
    parameters: int | None = None
    quantization: str | None = None
    dtype: str | None = None
    context_length: int | None = None  # the trained context window
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
    notes: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, value: Any, label: str) -> ModelMetadata:
        """Validate a stored metadata object; raise ValueError naming the bad key."""
        if not isinstance(value, dict):
            raise ValueError(f"{label}: 'metadata' must be an object")
        unknown = set(value) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"{label}: unknown metadata key(s) {sorted(unknown)}")
        for f in fields(cls):
            if f.name in value:
                _checked(cls, f, value[f.name], label, f"metadata.{f.name}")
        return cls(**{**value, "notes": tuple(value.get("notes", ()))})

    def to_json(self, every_key: bool) -> dict[str, Any]:
        """The stored object; without every_key, only the keys that have a value."""
        doc: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if every_key or value not in (None, ()):
                doc[f.name] = list(value) if isinstance(value, tuple) else value
        return doc


@dataclass(frozen=True, kw_only=True)
class ModelEntry:
    """A model in the library: where it is, how to load it, what its header says."""

    id: str = _rule(lambda v: bool(_ID_RE.match(v)), "lower-case letters, digits, .-_")
    name: str = _rule(lambda v: 0 < len(v) <= 200, "1 to 200 characters")
    path: str = _rule(bool, "a non-empty path")  # relative to models/ unless external
    external: bool = _rule(None, "true or false")  # registered in place, or remote
    format: str = _rule(lambda v: v in capabilities.FORMATS, f"one of {capabilities.FORMAT_NAMES}")
    backend: str = _rule(
        lambda v: v in capabilities.BACKENDS, f"one of {capabilities.BACKEND_NAMES}"
    )
    architecture: str = _rule(bool, "a non-empty name")
    architecture_source: str = _rule(
        lambda v: v in ARCHITECTURE_SOURCES, f"one of {ARCHITECTURE_SOURCES}", default="metadata"
    )
    size_bytes: int = _rule(lambda v: v >= 0, "a size in bytes")
    mtime: int | None = _rule(None, "", default=None)  # newest file time, ns
    sha256: str | None = _rule(
        lambda v: bool(_SHA_RE.match(v)), "64 hex digits or null", default=None
    )
    added_at: str = _rule(bool, "a date")
    status: str = _rule(lambda v: v in STATUSES, f"one of {STATUSES}")
    problem: str | None = _rule(None, "", default=None)  # why it is damaged
    metadata: ModelMetadata = field(default_factory=ModelMetadata)
    defaults: Mapping[str, Any] = field(default_factory=sampling.defaults)
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False)  # keys not known here

    def __post_init__(self) -> None:
        for name in ("defaults", "extra"):  # read-only views: an entry changes by replace()
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))

    @property
    def is_remote(self) -> bool:
        """Served by an OpenAI-compatible server: no files on this machine."""
        return capabilities.is_remote(self.format)

    @property
    def secret_name(self) -> str:
        """The vault secret that holds this model's API key (remote models)."""
        return f"api-key:{self.id}"

    @property
    def location(self) -> str:
        """Where its files are, as the user sees it: models/<path>, or the path as stored."""
        return self.path if self.external else f"models/{self.path}"

    @classmethod
    def from_json(cls, doc: Any) -> ModelEntry:
        """Validate one stored entry; raise ValueError naming the first bad field."""
        if not isinstance(doc, dict):
            raise ValueError("the entry is not an object")
        values: dict[str, Any] = {}
        label = ""
        for f in _plain_fields():
            if f.name in doc:
                values[f.name] = _checked(ModelEntry, f, doc[f.name], label, f.name)
            elif f.default is MISSING:
                raise ValueError(f"{label + ': ' if label else ''}'{f.name}' is missing")
            label = label or f"entry {values['id']!r}"
        metadata = ModelMetadata.from_json(doc.get("metadata", {}), label)
        defaults = sampling.validate(doc.get("defaults", {}), f"{label}: defaults")
        extra = {k: v for k, v in doc.items() if k not in _STORED_NAMES}
        entry = cls(**values, metadata=metadata, defaults=defaults, extra=extra)
        entry._check_together(label)
        return entry

    def _check_together(self, label: str) -> None:
        """The rules that tie fields together."""
        if self.status == "damaged" and not self.problem:
            raise ValueError(f"{label}: a damaged entry needs a 'problem' saying what is wrong")
        if self.is_remote or capabilities.BACKENDS[self.backend].remote:
            if not (self.is_remote and self.backend in capabilities.FORMATS[self.format].backends):
                raise ValueError(f"{label}: remote models need format and backend 'openai'")
            if not _URL_RE.match(self.path) or not self.external:
                raise ValueError(f"{label}: 'path' must be the server's http(s) base URL, external")
            if not self.metadata.model_name:
                raise ValueError(f"{label}: 'metadata.model_name' must name the server's model")
        if not self.external and (Path(self.path).is_absolute() or ".." in Path(self.path).parts):
            raise ValueError(f"{label}: 'path' must stay inside models/ unless 'external' is true")

    def to_json(self) -> dict[str, Any]:
        """The entry as registry.json stores it (see the module docstring)."""
        doc: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "metadata":
                value = value.to_json(every_key=not self.is_remote)
            elif f.name == "defaults":
                value = dict(value)
            elif f.name == "extra":
                doc.update(value)
                continue
            elif f.name == "problem" and value is None:
                continue
            doc[f.name] = value
        return doc


_STORED_NAMES = frozenset(f.name for f in fields(ModelEntry)) - {"extra"}


@cache
def _plain_fields() -> tuple[Field, ...]:
    """The fields with a rule of their own (metadata and defaults are checked apart)."""
    return tuple(f for f in fields(ModelEntry) if "check" in f.metadata)


@cache
def _type_check(owner: type, name: str) -> tuple[Callable[[Any], bool], str]:
    hint = typing.get_type_hints(owner)[name]
    return checker(hint), describe(hint)


def _checked(owner: type, f: Field, value: Any, label: str, key: str) -> Any:
    """value, if it has the field's declared type and passes its rule; else ValueError."""
    has_type, type_text = _type_check(owner, f.name)
    rule = f.metadata.get("check")
    if not has_type(value) or (rule is not None and value is not None and not rule(value)):
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        where = f"{label}: " if label else ""
        raise ValueError(
            f"{where}'{key}' is {shown}; expected {f.metadata.get('expected') or type_text}"
        )
    return value
