"""What each model format and backend can do: the one table everyone reads.

- FORMATS: each format the library knows, the backends that can load it, the backend it
  gets by default, and whether it is served remotely (no files on this machine).
- BACKENDS: each backend, whether it is remote, and the load options it takes with their
  bounds (per backend, as text-generation-webui keeps its parameters per loader).

The library (inspection, registration, registry validation), the import page, the load
controls and the engine's option check read it; a backend's module holds only how it
loads and runs a model (appliance.engine.backends).
"""

from __future__ import annotations

from dataclasses import dataclass

MIN_CTX = 64
MAX_CTX = 1 << 20


@dataclass(frozen=True)
class LoadOption:
    """One load option (`Host.load(..., options=)`): a whole number within bounds."""

    name: str
    low: int
    high: int
    description: str


@dataclass(frozen=True)
class Format:
    """A kind of model file (or server) and the backends that can load it."""

    name: str
    backends: tuple[str, ...]  # those that can load it; empty: it cannot be used alone
    default_backend: str  # what inspection proposes (for a lone file: its folder's backend)
    remote: bool = False  # served by another machine: no files here
    refusal: str = ""  # why it cannot be registered, when `backends` is empty


@dataclass(frozen=True)
class Backend:
    """A backend's capabilities (its code lives in appliance.engine.backends)."""

    name: str
    options: tuple[LoadOption, ...]
    remote: bool = False

    def option(self, name: str) -> LoadOption | None:
        return next((o for o in self.options if o.name == name), None)


N_CTX = LoadOption("n_ctx", MIN_CTX, MAX_CTX, "context window in tokens")
N_THREADS = LoadOption("n_threads", 1, 1024, "CPU threads")
N_GPU_LAYERS = LoadOption("n_gpu_layers", -1, 100_000, "layers offloaded to the GPU (-1 = all)")
PARALLEL = LoadOption("parallel", 1, 64, "requests generated at once (llama-server slots)")
CUDA = LoadOption("n_gpu_layers", -1, 100_000, "0 = CPU only; otherwise CUDA when present")

FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("gguf", ("llama.cpp", "ctransformers"), "llama.cpp"),
        Format("ggml", ("ctransformers",), "ctransformers"),
        Format("safetensors", (), "transformers", refusal=(
            "a single .safetensors file has no config.json or tokenizer. Import the whole "
            "Hugging Face folder instead."
        )),
        Format("hf-folder", ("transformers",), "transformers"),
        Format("openai", ("openai",), "openai", remote=True),
    )
}  # fmt: skip
BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend("llama.cpp", (N_CTX, N_THREADS, N_GPU_LAYERS, PARALLEL)),
        Backend("ctransformers", (N_CTX, N_THREADS)),  # always on the CPU
        Backend("transformers", (N_CTX, N_THREADS, CUDA)),
        Backend("openai", (N_CTX,), remote=True),
    )
}
FORMAT_NAMES = tuple(FORMATS)
BACKEND_NAMES = tuple(BACKENDS)
LOCAL_BACKENDS = tuple(name for name, b in BACKENDS.items() if not b.remote)
OPTION_NAMES = tuple(dict.fromkeys(o.name for b in BACKENDS.values() for o in b.options))


def default_backend(format_name: str) -> str:
    return FORMATS[format_name].default_backend


def can_load(backend: str, format_name: str) -> bool:
    return backend in FORMATS[format_name].backends


def is_remote(format_name: str) -> bool:
    return FORMATS[format_name].remote
