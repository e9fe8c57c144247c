"""The engine's typed errors; each message is written for the user.

They cross the worker boundary by class name (`KINDS`), so the host re-raises the same
type the backend raised inside the worker process.
"""

from __future__ import annotations

from appliance.errors import ApplianceError


class EngineError(ApplianceError):
    """Base class of the engine's errors."""


class EngineBusy(EngineError):
    """The request queue is full: try again when a reply has finished."""


class ModelLoadError(EngineError):
    """A backend refused the model; the message names the file and the backend's reason."""


class WorkerCrashed(EngineError):
    """The model's worker process died (segfault, abort, out-of-memory kill)."""


class BackendUnavailable(EngineError):
    """The backend's optional library is not installed; the message names the extra."""


class ContextOverflow(EngineError):
    """A single message does not fit the context window even alone."""


class RemoteServerError(EngineError):
    """An OpenAI-compatible server refused or could not be reached."""


class GenerationError(EngineError):
    """The backend failed while generating (not a crash)."""


class InvalidChat(EngineError):
    """The messages or settings of a chat request are malformed."""


class InvalidOptions(EngineError):
    """A load option (n_ctx, n_threads, n_gpu_layers...) is out of range."""


KINDS: dict[str, type[EngineError]] = {
    cls.__name__: cls
    for cls in (
        EngineBusy,
        ModelLoadError,
        WorkerCrashed,
        BackendUnavailable,
        ContextOverflow,
        RemoteServerError,
        GenerationError,
        InvalidChat,
        InvalidOptions,
    )
}


def from_kind(kind: str, message: str) -> EngineError:
    """Rebuild an error sent by the worker as (class name, message)."""
    return KINDS.get(kind, GenerationError)(message)
