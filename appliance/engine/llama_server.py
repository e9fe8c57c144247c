"""llama.cpp's own server (`llama-server`) for one GGUF model, as a managed child process.

`scripts/build-llama-server` builds the program from the llama.cpp tree vendored in the
pinned llama-cpp-python sdist (`make install` links it at .venv/llama-server; the image
copies it to /opt/venv/llama-server). One `LlamaServer` is one process for one model:

- it listens only on a Unix socket inside a private 0700 folder; a random key, in a 0600
  file there (`--api-key-file`: never on the command line, where `ps` would show it), is
  required on every request but `/health`;
- `start()` returns when `/health` answers 200, or raises ModelLoadError with llama.cpp's
  own reason from its log (`tensor '...' data is not within the file bounds`...);
- `stop()` sends SIGTERM, then SIGKILL, and removes the folder; `alive()`, `rss_bytes()`;
- `cpu_backend` names the CPU kernels it loaded. A portable build (GGML_BACKEND_DL with
  GGML_CPU_ALL_VARIANTS) carries one `libggml-cpu-<variant>.so` per x86-64 level, and
  ggml loads the best-scoring one it finds beside the program (or in the working
  directory). `cpu_variant=` (or APPLIANCE_LLAMA_CPU_VARIANT) forces one: the server is
  then run from a folder holding the program, the other libraries and only that variant;
- `client()` speaks HTTP over the socket (stdlib http.client), always with the key.

from appliance.engine.llama_server import LlamaServer, ServerOptions
with LlamaServer("models/x.gguf", ServerOptions(parallel=2)) as server:
    print(server.client().chat_text([{"role": "user", "content": "Hi"}], temperature=0))
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import queue
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from appliance.engine.errors import (
    BackendUnavailable,
    GenerationError,
    InvalidOptions,
    ModelLoadError,
    WorkerCrashed,
)
from appliance.engine.process import describe_returncode
from appliance.offline import OFFLINE_ENV

BINARY_ENV = "APPLIANCE_LLAMA_SERVER"
VARIANT_ENV = "APPLIANCE_LLAMA_CPU_VARIANT"
# Where `make install` links the build (.venv/llama-server) and the image copies it.
INSTALL_DIR = Path(sys.prefix) / "llama-server"
BINARY = "llama-server"
CPU_LIB_PREFIX, LIB_SUFFIX = "libggml-cpu-", ".so"
# CPU variants that crashed llama-server while it loaded (SIGILL, SIGSEGV) in this
# process; later starts leave them out.
# APPLIANCE_LLAMA_CPU_AVOID (comma-separated) adds to it from the start.
AVOIDED_VARIANTS: set[str] = {
    v.strip() for v in os.environ.get("APPLIANCE_LLAMA_CPU_AVOID", "").split(",") if v.strip()
}
_ATTEMPTS = 3
# A Unix socket path must fit in sockaddr_un (108 bytes on Linux, with its NUL).
_MAX_SOCKET_PATH = 100

_LOADED_CPU = re.compile(r"loaded CPU backend from (?P<path>\S+)")
# A log line with --log-prefix: "0.00.014.460 E srv    load_model: failed to ...".
_LINE = re.compile(r"^(?:[\d.]+ )?(?P<level>[IWED]) (?:[a-z]{3} +)?(?P<text>.*)$")
_FUNC = re.compile(r"^[a-z_0-9]+:\s+(?:[a-z_0-9]+:\s+)?(?:error loading model:\s*)?")
_GENERIC = re.compile(
    r"failed to load model|exiting due to model loading error|error loading model$|"
    r"unable to load model|^\s*$|cleaning up before exit|^main: "
)


class ServerUnavailable(BackendUnavailable):
    """No llama-server program was built or found."""


class ServerLost(WorkerCrashed):
    """The server process died or closed the connection in the middle of a request;
    `how` says how the process ended ("SIGKILL: killed; ...")."""

    def __init__(self, message: str, how: str = "") -> None:
        super().__init__(message)
        self.how = how or "the connection was lost"


class ServerHTTPError(GenerationError):
    """The server answered a request with an HTTP error; `status` holds the code."""

    def __init__(self, message: str, status: int, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


def find_binary(binary: str | os.PathLike[str] | None = None) -> Path:
    """The llama-server program: `binary`, else $APPLIANCE_LLAMA_SERVER, else the install."""
    given = binary or os.environ.get(BINARY_ENV)
    path = Path(given) if given else INSTALL_DIR / "bin" / BINARY
    if path.is_file() and os.access(path, os.X_OK):
        return path
    where = f"{path} (from {'the caller' if binary else BINARY_ENV})" if given else str(path)
    raise ServerUnavailable(
        f"llama-server is not built: {where} is missing. Run `make install`, which builds "
        "it (scripts/build-llama-server), or point APPLIANCE_LLAMA_SERVER at the program."
    )


def cpu_variants(binary: Path) -> list[str]:
    """The CPU kernel variants shipped beside the program (empty for a non-DL build)."""
    return sorted(
        p.name.removeprefix(CPU_LIB_PREFIX).removesuffix(LIB_SUFFIX)
        for p in binary.parent.glob(f"{CPU_LIB_PREFIX}*{LIB_SUFFIX}")
    )


def gpu_offload_available(binary: Path) -> bool:
    """Whether the build carries a GPU backend (CUDA, HIP, Vulkan, SYCL, Metal) that -ngl
    can offload to: linked into the program's folder as libggml-<gpu>.so."""
    folder = binary.resolve().parent
    return any(
        (folder / f"libggml-{name}{LIB_SUFFIX}").exists()
        for name in ("cuda", "hip", "vulkan", "sycl", "metal", "musa")
    )


def build_info(binary: Path) -> dict[str, Any]:
    """BUILD.json written by scripts/build-llama-server (flavour, flags, times), or {}."""
    try:
        return json.loads((binary.resolve().parent.parent / "BUILD.json").read_text())
    except (OSError, ValueError):
        return {}


@dataclass(frozen=True)
class ServerOptions:
    """How the server runs the model; each maps to one llama-server flag."""

    n_ctx: int = 4096  # -c: the KV cache, shared by the slots when kv_unified
    n_threads: int | None = None  # -t / -tb; None: llama.cpp's default
    n_gpu_layers: int = 0  # -ngl
    parallel: int = 1  # -np: requests decoded at once (continuous batching)
    kv_unified: bool = True  # one KV pool: each slot may use up to n_ctx
    n_batch: int | None = None  # -b
    cache_ram_mib: int | None = None  # --cache-ram: host-memory prompt cache; None: default
    alias: str | None = None  # the model name the server reports
    metrics: bool = True  # /metrics (Prometheus text)
    slots: bool = True  # /slots
    embeddings: bool = False  # /v1/embeddings too (mean pooling); generation is unchanged
    extra_args: tuple[str, ...] = ()

    def validate(self) -> None:
        checks = (
            (self.n_ctx >= 16, f"n_ctx must be at least 16, not {self.n_ctx}"),
            (self.n_threads is None or self.n_threads >= 1, "n_threads must be at least 1"),
            (self.n_gpu_layers >= -1, "n_gpu_layers must be -1 (all) or more"),
            (1 <= self.parallel <= 64, f"parallel must be 1 to 64, not {self.parallel}"),
            (self.n_batch is None or self.n_batch >= 1, "n_batch must be at least 1"),
        )
        for ok, message in checks:
            if not ok:
                raise InvalidOptions(f"llama-server: {message}.")

    def args(self) -> list[str]:
        args = ["-c", str(self.n_ctx), "-np", str(self.parallel), "-ngl", str(self.n_gpu_layers)]
        if self.n_threads is not None:
            args += ["-t", str(self.n_threads), "-tb", str(self.n_threads)]
        args.append("--kv-unified" if self.kv_unified else "--no-kv-unified")
        if self.n_batch is not None:
            args += ["-b", str(self.n_batch)]
        if self.cache_ram_mib is not None:
            args += ["--cache-ram", str(self.cache_ram_mib)]
        if self.alias:
            args += ["--alias", self.alias]
        if self.metrics:
            args.append("--metrics")  # off by default; there is no --no-metrics
        args.append("--slots" if self.slots else "--no-slots")
        if self.embeddings:
            args += ["--embeddings", "--pooling", "mean"]
        return [*args, *self.extra_args]


def server_env() -> dict[str, str]:
    """The parent's environment without llama.cpp's own variables (LLAMA_ARG_*,
    LLAMA_API_KEY...: they would override the command line or add a key), offline."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLAMA_")}
    return {**env, **OFFLINE_ENV}


class LlamaServer:
    """One llama-server process serving one GGUF file on a private Unix socket."""

    def __init__(
        self,
        model: str | os.PathLike[str],
        options: ServerOptions | None = None,
        *,
        binary: str | os.PathLike[str] | None = None,
        cpu_variant: str | None = None,
        start_timeout_s: float = 120.0,
        log_lines: int = 400,
    ) -> None:
        self.model = Path(model)
        self.options = options or ServerOptions()
        self.options.validate()
        self.binary = find_binary(binary)
        self.forced_variant = cpu_variant or os.environ.get(VARIANT_ENV) or None
        self.variants = cpu_variants(self.binary)
        self.start_timeout_s = start_timeout_s
        self._log: deque[str] = deque(maxlen=log_lines)
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None
        self._key = ""
        self._reader: threading.Thread | None = None
        self._lock = threading.Lock()
        self._finalizer: weakref.finalize | None = None
        self.cpu_backend_path: str | None = None
        self.started_s: float | None = None

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> LlamaServer:
        """Start the process and wait until /health says ready; ModelLoadError if not.

        A CPU variant that dies of SIGILL or SIGSEGV while loading (the CPU advertises
        instructions the system does not run: seen with AMX in a VM) is avoided from then
        on in this process, and the start is tried again with ggml's next choice (twice
        at most).
        """
        if self._proc is not None:
            raise RuntimeError("this LlamaServer was already started")
        if not self.model.is_file():
            raise ModelLoadError(f"llama-server cannot load {self.model}: no such file.")
        t0 = time.monotonic()
        for attempt in range(_ATTEMPTS):
            try:
                self._launch()
                self._wait_ready(t0 + self.start_timeout_s)
                break
            except ModelLoadError:
                crashed = self.cpu_backend
                self.stop()
                if attempt + 1 == _ATTEMPTS or not self._may_retry(crashed):
                    raise
                AVOIDED_VARIANTS.add(crashed)
                self._proc = self._dir = None
                self._log.clear()
                self.cpu_backend_path = None
            except BaseException:
                self.stop()
                raise
        self.started_s = time.monotonic() - t0
        return self

    def _may_retry(self, crashed: str | None) -> bool:
        return (
            self.returncode() in (-signal.SIGILL, -signal.SIGSEGV)
            and not self.forced_variant
            and crashed is not None
            and crashed not in AVOIDED_VARIANTS
            and len(set(self.variants) - AVOIDED_VARIANTS) > 1
        )

    def _launch(self) -> None:
        self._dir = _private_dir()
        self._key = secrets.token_urlsafe(32)
        key_file = self._dir / "api-key"
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(self._key + "\n")
        program = self.binary
        keep = self.variants
        if self.forced_variant:
            if self.forced_variant not in keep:
                available = ", ".join(keep) or "none: this is not a GGML_BACKEND_DL build"
                raise InvalidOptions(
                    f"llama-server has no CPU variant {self.forced_variant!r} "
                    f"(available: {available})."
                )
            keep = [self.forced_variant]
        elif AVOIDED_VARIANTS & set(keep):
            keep = [v for v in keep if v not in AVOIDED_VARIANTS]
        if keep != self.variants:
            program = _variant_view(self.binary, keep, self._dir / "bin")
        command = [
            str(program), "-m", str(self.model.resolve()),
            "--host", str(self.socket_path), "--api-key-file", str(key_file),
            "--no-webui", "--offline", "--log-prefix", "--log-colors", "off",
            *self.options.args(),
        ]  # fmt: skip
        self._proc = SPAWNER.popen(
            command,
            cwd=self._dir,  # ggml also looks for backends in the working directory
            env=server_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._finalizer = weakref.finalize(self, _cleanup, self._proc, self._dir)
        self._reader = threading.Thread(target=self._read_log, daemon=True, name="llama-log")
        self._reader.start()

    def _healthy(self) -> bool:
        """Whether /health answers 200 yet (it needs no key; 503 while loading)."""
        if not self.socket_path.exists():
            return False
        with contextlib.suppress(OSError, http.client.HTTPException, ServerLost):
            status, _ = self.client(timeout_s=5.0).request("GET", "/health")
            return status == 200
        return False

    def _wait_ready(self, deadline: float) -> None:
        assert self._proc is not None
        while True:
            if self.cpu_backend_path is None:
                # ggml picks the CPU variant first thing, before the socket exists.
                self.cpu_backend_path = _mapped_cpu_backend(self._proc.pid)
            if self._proc.poll() is not None:
                raise ModelLoadError(self._load_failure())
            if self._healthy():
                return
            if time.monotonic() > deadline:
                last = self._reason() or (self.log_tail(1) or ["no output"])[0]
                raise ModelLoadError(
                    f"llama-server did not become ready within {self.start_timeout_s:.0f} s "
                    f"for {self.model.name}; its log ends with: {last}"
                )
            time.sleep(0.05)

    def _load_failure(self) -> str:
        if self._reader is not None:
            self._reader.join(timeout=5)
        code = self.returncode()
        # llama.cpp exits with 1 after logging why; a signal is a crash in native code.
        reason = (None if code is not None and code < 0 else self._reason()) or (
            f"llama-server ended ({self.describe_exit()})"
        )
        if code in (-signal.SIGILL, -signal.SIGSEGV) and self.cpu_backend:
            reason += (
                f" in its {self.cpu_backend!r} CPU kernels; {VARIANT_ENV}=x64 forces the "
                "baseline ones, which run on every x86-64 CPU"
            )
        return (
            f"llama.cpp cannot load {self.model.name}: {reason}. If the file was copied, copy "
            "it again from the original; otherwise the file is damaged or not a model this "
            "llama.cpp supports."
        )

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after grace_s; remove the socket folder. Idempotent."""
        with self._lock:
            proc, folder = self._proc, self._dir
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=grace_s)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    proc.wait()
            if self._reader is not None:
                self._reader.join(timeout=5)
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
            if self._finalizer is not None:
                self._finalizer.detach()

    def __enter__(self) -> LlamaServer:
        return self.start() if self._proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- state -------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def socket_path(self) -> Path:
        if self._dir is None:
            raise RuntimeError("the server is not started")
        return self._dir / "server.sock"

    @property
    def private_dir(self) -> Path | None:
        return self._dir

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    def rss_bytes(self) -> int | None:
        """Resident memory of the server process, or None when it is not running."""
        if not self.alive():
            return None
        try:
            return psutil.Process(self.pid).memory_info().rss
        except psutil.Error:
            return None

    @property
    def cpu_backend(self) -> str | None:
        """The CPU variant loaded ('haswell', 'x64'...); None for a build with the CPU
        kernels linked in (not GGML_BACKEND_DL) or before the log said."""
        if self.cpu_backend_path is None:
            return None
        name = Path(self.cpu_backend_path).name.removesuffix(LIB_SUFFIX)
        return name.removeprefix(CPU_LIB_PREFIX) if name != "libggml-cpu" else "cpu"

    def log_tail(self, n: int = 40) -> list[str]:
        """The last n lines of llama.cpp's own log (stdout and stderr)."""
        return list(self._log)[-n:]

    def describe_exit(self, wait_s: float = 2.0) -> str:
        """How the process ended: 'SIGKILL: killed; ...', 'exit code 1', or 'running'."""
        if self._proc is None:
            return "not started"
        try:
            code = self._proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            return "still running"
        return describe_returncode(code)

    def client(self, timeout_s: float = 300.0) -> LlamaClient:
        """An HTTP client for this server (cheap: one connection per request)."""
        return LlamaClient(self.socket_path, self._key, timeout_s=timeout_s, on_lost=self._lost)

    def _lost(self) -> str:
        state = self.describe_exit()
        last = self._reason()
        return f"{state}; last log: {last}" if last and state != "still running" else state

    # --- llama.cpp's log ---------------------------------------------------------------

    def _read_log(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for raw in iter(self._proc.stdout.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip()
            self._log.append(line)
            if self.cpu_backend_path is None and (found := _LOADED_CPU.search(line)):
                self.cpu_backend_path = found["path"]
        self._proc.stdout.close()

    def _reason(self) -> str | None:
        """llama.cpp's own explanation of a failure: its first specific error line (or,
        with none, its first line without a level, as printed before logging starts)."""
        parsed = [
            (m["level"], m["text"]) if (m := _LINE.match(ln)) else ("", ln) for ln in self._log
        ]
        errors = [text for level, text in parsed if level == "E"]
        for line in errors or [text for level, text in parsed if not level]:
            if line.startswith("warning:"):
                continue
            text = _FUNC.sub("", line.strip())
            if text and not _GENERIC.search(text):
                return text.rstrip(".")
        return None


class _Spawner:
    """Starts server processes so that they never outlive this one.

    Each start goes through `setpriv --pdeathsig KILL` (util-linux, on every Debian
    system): if this process dies, even of SIGKILL, the kernel kills its llama-servers,
    so their memory never stays taken by an orphan. The parent-death signal follows the
    *thread* that started the child, not the process, and the host starts servers from
    short-lived threads too (a page's script run, a request), so every start is made by
    this one long-lived thread. Without setpriv the start is plain.
    """

    def __init__(self) -> None:
        self._requests: queue.Queue[tuple[list[str], dict[str, Any], list[Any],
                                          threading.Event]] = queue.Queue()  # fmt: skip
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.setpriv = shutil.which("setpriv")

    def popen(self, command: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._serve, daemon=True,
                                                name="llama-spawner")  # fmt: skip
                self._thread.start()
        box: list[Any] = []
        done = threading.Event()
        self._requests.put((command, kwargs, box, done))
        done.wait()
        if isinstance(box[0], BaseException):
            raise box[0]
        return box[0]

    def _serve(self) -> None:
        while True:
            command, kwargs, box, done = self._requests.get()
            if self.setpriv:
                command = [self.setpriv, "--pdeathsig", "KILL", "--", *command]
            try:
                box.append(subprocess.Popen(command, **kwargs))
            except BaseException as exc:  # handed to the caller's thread
                box.append(exc)
            done.set()


SPAWNER = _Spawner()


def _mapped_cpu_backend(pid: int) -> str | None:
    """The libggml-cpu-*.so the process has mapped: ggml opens every variant to score it,
    then keeps only the one it loads. (Its log says so too, but only at -lv 4.)"""
    try:
        with open(f"/proc/{pid}/maps") as fh:
            for line in fh:
                path = line.rstrip("\n").partition("/")[2]
                if path and Path("/" + path).name.startswith(CPU_LIB_PREFIX):
                    return "/" + path
    except OSError:
        pass
    return None


def _private_dir() -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    if not os.path.isdir(base) or len(base) > _MAX_SOCKET_PATH - 40:
        base = "/tmp"  # noqa: S108 - mkdtemp below makes a private 0700 folder in it
    folder = Path(tempfile.mkdtemp(prefix="llama-server-", dir=base))
    os.chmod(folder, 0o700)
    return folder


def _variant_view(binary: Path, keep: list[str], into: Path) -> Path:
    """A folder with the program, every library beside it, and only the CPU variants kept.

    ggml scores every `libggml-cpu-*.so` in the program's folder (it reads
    /proc/self/exe, so the program must be a real file there: a hard link, else a copy)
    and in the working directory, and loads the best.
    """
    source = binary.resolve().parent
    into.mkdir(mode=0o700)
    for lib in source.glob(f"*{LIB_SUFFIX}"):
        name = lib.name.removeprefix(CPU_LIB_PREFIX).removesuffix(LIB_SUFFIX)
        if lib.name.startswith(CPU_LIB_PREFIX) and name not in keep:
            continue
        (into / lib.name).symlink_to(lib)
    program = into / binary.name
    try:
        os.link(binary.resolve(), program)
    except OSError:
        shutil.copy2(binary.resolve(), program)
    return program


def _cleanup(proc: subprocess.Popen[bytes], folder: Path) -> None:
    """At garbage collection or interpreter exit: never leave a server running."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
    shutil.rmtree(folder, ignore_errors=True)


# --- HTTP over the Unix socket -----------------------------------------------------------


class Abort:
    """Ends one request from another thread: `abort()` shuts its connection down, so a
    read blocked on it returns at once, and llama-server stops that generation."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self.aborted = False

    def attach(self, sock: socket.socket) -> None:
        with self._lock:
            self._sock = sock
            if self.aborted:
                _shutdown(sock)

    def abort(self) -> None:
        with self._lock:
            self.aborted = True
            if self._sock is not None:
                _shutdown(self._sock)


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float, abort: Abort | None = None) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = str(path)
        self._abort = abort

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock
        if self._abort is not None:
            self._abort.attach(sock)


class LlamaClient:
    """llama-server's HTTP API over its Unix socket; the key goes with every request.

    Streams are generators: closing one early (or breaking out of the loop) closes its
    connection, and llama-server then cancels that request's generation. A connection
    that drops mid-reply raises ServerLost saying how the process ended.
    """

    def __init__(
        self,
        socket_path: Path,
        api_key: str | None,
        *,
        timeout_s: float = 300.0,
        on_lost: Callable[[], str] | None = None,
    ) -> None:
        self.socket_path = Path(socket_path)
        self.timeout_s = timeout_s
        self._key = api_key
        self._on_lost = on_lost

    def _headers(self, body: bytes | None) -> dict[str, str]:
        headers = {"Accept": "application/json, text/event-stream"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        if body is not None:
            headers["Content-Type"] = "application/json"
        return headers

    def _open(
        self, method: str, path: str, payload: Any = None, abort: Abort | None = None
    ) -> http.client.HTTPResponse:
        body = None if payload is None else json.dumps(payload).encode()
        conn = _UnixConnection(self.socket_path, self.timeout_s, abort)
        try:
            conn.request(method, path, body=body, headers=self._headers(body))
            return conn.getresponse()
        except (ConnectionError, FileNotFoundError, http.client.HTTPException) as exc:
            conn.close()
            raise self._lost(exc) from None
        except TimeoutError:
            conn.close()
            raise GenerationError(
                f"llama-server did not answer {path} within {self.timeout_s:.0f} s."
            ) from None

    def _lost(self, exc: BaseException) -> ServerLost:
        how = self._on_lost() if self._on_lost else type(exc).__name__
        return ServerLost(f"llama-server stopped during the request ({how}).", how)

    def request(self, method: str, path: str, payload: Any = None) -> tuple[int, Any]:
        """(status, decoded JSON or text) for any endpoint; never raises on a status."""
        resp = self._open(method, path, payload)
        try:
            raw = resp.read()
        except (ConnectionError, http.client.HTTPException) as exc:
            raise self._lost(exc) from None
        finally:
            resp.close()
        return resp.status, _loads(raw)

    def _json(self, method: str, path: str, payload: Any = None) -> Any:
        status, body = self.request(method, path, payload)
        if status >= 400:
            raise _http_error(path, status, body)
        return body

    def health(self) -> dict[str, Any]:
        return self._json("GET", "/health")

    def props(self) -> dict[str, Any]:
        return self._json("GET", "/props")

    def slots(self) -> list[dict[str, Any]]:
        return self._json("GET", "/slots")

    def metrics(self) -> str:
        return self._json("GET", "/metrics")

    def tokenize(self, text: str, *, add_special: bool = False) -> list[int]:
        body = self._json("POST", "/tokenize", {"content": text, "add_special": add_special})
        return list(body["tokens"])

    def embeddings(self, inputs: list[str]) -> dict[str, Any]:
        """OpenAI's embedding list for the inputs (needs ServerOptions.embeddings)."""
        return self._json("POST", "/v1/embeddings", {"input": inputs})

    def detokenize(self, tokens: list[int]) -> str:
        return self._json("POST", "/detokenize", {"tokens": tokens})["content"]

    def apply_template(self, messages: list[dict[str, Any]]) -> str:
        """The prompt the model's chat template makes of these messages."""
        return self._json("POST", "/apply-template", {"messages": messages})["prompt"]

    def chat_stream(
        self, messages: list[dict[str, Any]], *, abort: Abort | None = None, **params: Any
    ) -> Iterator[dict]:
        """OpenAI chat chunks from /v1/chat/completions, usage in the last one."""
        payload = {"messages": messages, **params, "stream": True}
        payload.setdefault("stream_options", {"include_usage": True})
        return self._stream("/v1/chat/completions", payload, _chat_done, abort)

    def completion_stream(
        self, prompt: str | list[int], *, abort: Abort | None = None, **params: Any
    ) -> Iterator[dict]:
        """llama.cpp's native /completion chunks ({'content': ..., 'stop': ...})."""
        payload = {"prompt": prompt, **params, "stream": True}
        return self._stream("/completion", payload, lambda c: bool(c.get("stop")), abort)

    def chat_text(self, messages: list[dict[str, Any]], **params: Any) -> str:
        """The whole reply of a streamed chat, as text."""
        return "".join(
            choice["delta"].get("content") or ""
            for chunk in self.chat_stream(messages, **params)
            for choice in chunk.get("choices", ())
        )

    def _stream(
        self,
        path: str,
        payload: dict[str, Any],
        is_last: Callable[[dict], bool],
        abort: Abort | None = None,
    ) -> Iterator[dict]:
        resp = self._open("POST", path, payload, abort)
        try:
            if resp.status >= 400:
                raise _http_error(path, resp.status, _loads(resp.read()))
            finished = False
            while True:
                try:
                    line = resp.readline()
                except (ConnectionError, http.client.HTTPException) as exc:
                    raise self._lost(exc) from None
                except TimeoutError:
                    raise GenerationError(
                        f"llama-server sent nothing on {path} for {self.timeout_s:.0f} s."
                    ) from None
                if not line:
                    if finished:
                        return
                    raise self._lost(EOFError())
                line = line.strip()
                if line.startswith(b"error:"):
                    raise _http_error(path, 500, _loads(line[6:]))
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    return
                chunk = _loads(data)
                if isinstance(chunk, dict) and "error" in chunk:
                    raise _http_error(path, 500, chunk)
                finished = finished or is_last(chunk)
                yield chunk
        finally:
            resp.close()


def _loads(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return data.decode("utf-8", "replace")


def _chat_done(chunk: dict) -> bool:
    return any(c.get("finish_reason") for c in chunk.get("choices", ())) or (
        not chunk.get("choices") and "usage" in chunk
    )


def _http_error(path: str, status: int, body: Any) -> ServerHTTPError:
    message = body
    if isinstance(body, dict):
        err = body.get("error", body)
        message = err.get("message", err) if isinstance(err, dict) else err
    return ServerHTTPError(f"llama-server refused {path} (HTTP {status}): {message}", status, body)
