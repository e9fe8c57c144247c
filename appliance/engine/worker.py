"""The worker process: holds one model and runs the host's requests, one at a time.

Started by the host as `python -m appliance.engine.worker --fd N`, it reads requests
from the socket N and answers with events, the typed messages of
appliance.engine.protocol: Load -> Progress..., Loaded or Error; Chat -> Fitted, Chunk...,
Done or Error; Cancel stops a chat; Exit ends the process.

A reader thread receives requests while the main thread generates, so a cancel takes
effect at the next token. If the host goes away, the worker exits at once; a request it
cannot read ends it with exit code 2 and the reason on stderr, which the host reports.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import sys
import threading
from multiprocessing.connection import Connection

from appliance.engine.backends import Backend, LoadSpec, load_target
from appliance.engine.backends.base import run_chat
from appliance.engine.errors import EngineError, GenerationError, ModelLoadError
from appliance.engine.protocol import (
    Cancel,
    Chat,
    Error,
    Event,
    Exit,
    Load,
    Progress,
    ProtocolError,
    Request,
    decode_request,
    encode,
)


class Worker:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.backend: Backend | None = None
        self.context_length = 0
        self.requests: queue.Queue[Request] = queue.Queue()
        self.cancelled: set[int] = set()
        self.current: tuple[int, threading.Event] | None = None
        self.lock = threading.Lock()

    def send(self, event: Event) -> None:
        self.conn.send_bytes(encode(event))

    def read_forever(self) -> None:
        """Reader thread: queue requests, apply cancels at once, exit when the host is gone."""
        try:
            while True:
                request = decode_request(self.conn.recv_bytes())
                if isinstance(request, Cancel):
                    with self.lock:
                        self.cancelled.add(request.id)
                        if self.current and self.current[0] == request.id:
                            self.current[1].set()
                else:
                    self.requests.put(request)
        except (EOFError, OSError):
            os._exit(0)
        except ProtocolError as exc:
            print(f"worker: cannot read the host's request: {exc}", file=sys.stderr, flush=True)
            os._exit(2)

    def run(self) -> None:
        threading.Thread(target=self.read_forever, daemon=True, name="worker-reader").start()
        while True:
            request = self.requests.get()
            if isinstance(request, Exit):
                break
            if isinstance(request, Load):
                self.load(request)
            elif isinstance(request, Chat):
                self.chat(request)
        if self.backend is not None:
            self.backend.close()

    def load(self, request: Load) -> None:
        try:
            cls = load_target(request.target)
            cls.check_available()
            backend = cls()
            spec = LoadSpec(request.path, request.entry, dict(request.options), request.api_key)
            loaded = backend.load(spec, lambda text: self.send(Progress(text)))
        except EngineError as exc:
            self.send(Error(None, type(exc).__name__, str(exc)))
            return
        except Exception as exc:
            self.send(Error(None, ModelLoadError.__name__, f"{type(exc).__name__}: {exc}"))
            return
        self.backend, self.context_length = backend, loaded.context_length
        self.send(loaded)

    def chat(self, request: Chat) -> None:
        event = threading.Event()
        with self.lock:
            if request.id in self.cancelled:
                event.set()
            self.current = (request.id, event)
        try:
            self._generate(request, event)
        except EngineError as exc:
            self.send(Error(request.id, type(exc).__name__, str(exc)))
        except Exception as exc:
            message = f"The backend failed: {type(exc).__name__}: {exc}"
            self.send(Error(request.id, GenerationError.__name__, message))
        finally:
            with self.lock:
                self.current = None
                self.cancelled.discard(request.id)

    def _generate(self, request: Chat, event: threading.Event) -> None:
        if self.backend is None:
            raise GenerationError("No model is loaded in the worker.")
        for message in run_chat(self.backend, request, self.context_length, event):
            self.send(message)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="appliance model worker (started by the host)")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--preload", help="backend target whose library to import now")
    args = parser.parse_args(argv)
    conn = Connection(args.fd)
    if args.preload:
        with contextlib.suppress(Exception):  # the real load reports any problem
            load_target(args.preload).preload()
    Worker(conn).run()


if __name__ == "__main__":
    main()
