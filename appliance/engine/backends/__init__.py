"""Backends by name. Built-ins register exactly as a later backend would.

`register_backend(name, "package.module:Class")` records where a backend lives; the
module is imported only when the backend is used, and its heavy library only inside
the worker process. What each backend can load and which load options it takes is in
appliance.capabilities.
"""

from __future__ import annotations

import importlib

from appliance.engine.backends.base import Backend, Loaded, LoadSpec, Usage
from appliance.engine.errors import BackendUnavailable

__all__ = [
    "Backend",
    "LoadSpec",
    "Loaded",
    "Usage",
    "backend_class",
    "backend_names",
    "backend_target",
    "load_target",
    "register_backend",
]

_TARGETS: dict[str, str] = {}


def register_backend(name: str, target: str) -> None:
    """Make the backend class at target ("module:Class") available under name."""
    if ":" not in target:
        raise ValueError(f"backend target {target!r} must look like 'package.module:Class'")
    _TARGETS[name] = target


def backend_names() -> tuple[str, ...]:
    return tuple(_TARGETS)


def backend_target(name: str) -> str:
    try:
        return _TARGETS[name]
    except KeyError:
        raise BackendUnavailable(
            f"No backend named {name!r}; the known backends are {', '.join(_TARGETS)}."
        ) from None


def load_target(target: str) -> type[Backend]:
    """Import the (light) backend module and return its class."""
    module_name, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module_name), attr)
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise TypeError(f"{target} is not a Backend subclass")
    return cls


def backend_class(name: str) -> type[Backend]:
    return load_target(backend_target(name))


register_backend("llama.cpp", "appliance.engine.backends.llama_cpp:LlamaCppBackend")
register_backend("transformers", "appliance.engine.backends.hf_transformers:TransformersBackend")
register_backend("ctransformers", "appliance.engine.backends.ctransformers:CTransformersBackend")
register_backend("openai", "appliance.engine.backends.openai:OpenAIBackend")
