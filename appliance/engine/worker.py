"""The worker process: holds one model and runs the host's requests, one at a time.

Started by the host as `python -m appliance.engine.worker --fd N`, it talks over the
socket N with JSON messages (multiprocessing's length-prefixed frames):

    host -> worker  {"op": "load", "target", "path", "entry", "options", "api_key"}
                    {"op": "chat", "id", "system", "messages", "settings"}
                    {"op": "cancel", "id"}          {"op": "exit"}
    worker -> host  {"ev": "progress", "text"}      {"ev": "loaded", "info"}
                    {"ev": "fitted", "id", "dropped", "prompt_tokens", "context_length"}
                    {"ev": "chunk", "id", "text"}   {"ev": "done", "id", "finish",
                    "completion_tokens"}            {"ev": "error", "id", "kind", "message"}

A reader thread receives messages while the main thread generates, so a cancel takes
effect at the next token. If the host goes away, the worker exits at once.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import threading
from multiprocessing.connection import Connection
from typing import Any

from appliance.engine import prompt
from appliance.engine.backends import Backend, LoadSpec, Usage, load_target
from appliance.engine.errors import EngineError, GenerationError, ModelLoadError


class Worker:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.backend: Backend | None = None
        self.context_length = 0
        self.ops: queue.Queue[dict[str, Any]] = queue.Queue()
        self.cancelled: set[int] = set()
        self.current: tuple[int, threading.Event] | None = None
        self.lock = threading.Lock()

    def send(self, message: dict[str, Any]) -> None:
        self.conn.send_bytes(json.dumps(message).encode("utf-8"))

    def read_forever(self) -> None:
        """Reader thread: queue ops, apply cancels at once, exit when the host is gone."""
        try:
            while True:
                message = json.loads(self.conn.recv_bytes())
                if message.get("op") == "cancel":
                    with self.lock:
                        self.cancelled.add(message["id"])
                        if self.current and self.current[0] == message["id"]:
                            self.current[1].set()
                else:
                    self.ops.put(message)
        except (EOFError, OSError):
            os._exit(0)

    def run(self) -> None:
        threading.Thread(target=self.read_forever, daemon=True, name="worker-reader").start()
        while True:
            message = self.ops.get()
            op = message.get("op")
            if op == "exit":
                break
            if op == "load":
                self.load(message)
            elif op == "chat":
                self.chat(message)
        if self.backend is not None:
            self.backend.close()

    def load(self, message: dict[str, Any]) -> None:
        try:
            cls = load_target(message["target"])
            cls.check_available()
            backend = cls()
            spec = LoadSpec(
                path=message["path"],
                entry=message["entry"],
                options=message.get("options") or {},
                api_key=message.get("api_key"),
            )
            loaded = backend.load(spec, lambda text: self.send({"ev": "progress", "text": text}))
        except EngineError as exc:
            self.send({"ev": "error", "kind": type(exc).__name__, "message": str(exc)})
            return
        except Exception as exc:
            self.send({"ev": "error", "kind": ModelLoadError.__name__,
                       "message": f"{type(exc).__name__}: {exc}"})  # fmt: skip
            return
        self.backend, self.context_length = backend, loaded.context_length
        self.send({"ev": "loaded", "info": loaded.to_dict()})

    def chat(self, message: dict[str, Any]) -> None:
        request_id = message["id"]
        event = threading.Event()
        with self.lock:
            if request_id in self.cancelled:
                event.set()
            self.current = (request_id, event)
        try:
            self._generate(request_id, message, event)
        except EngineError as exc:
            self.send({"ev": "error", "id": request_id, "kind": type(exc).__name__,
                       "message": str(exc)})  # fmt: skip
        except Exception as exc:
            self.send({"ev": "error", "id": request_id, "kind": GenerationError.__name__,
                       "message": f"The backend failed: {type(exc).__name__}: {exc}"})  # fmt: skip
        finally:
            with self.lock:
                self.current = None
                self.cancelled.discard(request_id)

    def _generate(self, request_id: int, message: dict[str, Any], event: threading.Event) -> None:
        backend = self.backend
        if backend is None:
            raise GenerationError("No model is loaded in the worker.")
        settings = dict(message["settings"])
        fitted = prompt.fit(
            message.get("system"),
            message["messages"],
            backend.count_tokens,
            self.context_length,
            settings["max_tokens"],
        )
        self.send({"ev": "fitted", "id": request_id, "dropped": fitted.dropped,
                   "prompt_tokens": fitted.prompt_tokens,
                   "context_length": self.context_length})  # fmt: skip
        settings["max_tokens"] = fitted.max_tokens
        backend.usage = Usage()
        if not event.is_set():
            for text in backend.chat(fitted.messages, settings, event):
                self.send({"ev": "chunk", "id": request_id, "text": text})
                if event.is_set():
                    break
        finish = "cancelled" if event.is_set() else backend.usage.finish
        self.send({"ev": "done", "id": request_id, "finish": finish,
                   "completion_tokens": backend.usage.completion_tokens})  # fmt: skip


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
