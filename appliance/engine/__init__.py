"""The inference engine: backends, the worker process and the host the UI keeps.

host.py (queue, keep-alive, switching, the spare worker, status) drives each worker
through protocol.WorkerClient; protocol.py holds every message between the two;
worker.py runs one backend (backends/) in its own process, spawned by process.py.

from appliance.engine import Host
host = Host(library)
for text in host.chat(model_id, [{"role": "user", "content": "Hi"}]):
    print(text, end="")
"""

from appliance.engine.errors import (
    BackendUnavailable,
    ContextOverflow,
    EngineBusy,
    EngineError,
    GenerationError,
    InvalidChat,
    InvalidOptions,
    ModelLoadError,
    RemoteServerError,
    WorkerCrashed,
)
from appliance.engine.generation import Generation, GenerationResult
from appliance.engine.host import PHASES, Host, HostStatus

__all__ = [
    "PHASES",
    "BackendUnavailable",
    "ContextOverflow",
    "EngineBusy",
    "EngineError",
    "Generation",
    "GenerationError",
    "GenerationResult",
    "Host",
    "HostStatus",
    "InvalidChat",
    "InvalidOptions",
    "ModelLoadError",
    "RemoteServerError",
    "WorkerCrashed",
]
