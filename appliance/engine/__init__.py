"""The inference engine: backends, the processes that hold models, and the host.

host.py (queue, admission, keep-alive, switching, the spare worker, status) drives the
resident model through a Runner (runners.py):
- GGUF: ServerRunner. backends/llama_cpp.py starts llama.cpp's own server
  (llama_server.py: one `llama-server` process per resident model, on a private Unix
  socket with a per-process key) and serves N requests at once over its parallel slots;
- the others (transformers, ctransformers, remote): WorkerRunner. worker.py runs one
  backend (backends/) in its own process, spawned by process.py, one request at a time,
  spoken to through protocol.WorkerClient; protocol.py holds every message between them.
backends/base.py:run_chat is how a request runs on either: fit, stream, done.

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
