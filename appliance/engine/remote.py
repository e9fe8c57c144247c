"""A small client for OpenAI-compatible servers (vLLM, llama.cpp's server, Ollama, TGI).

Standard library only (http.client): JSON requests, server-sent events for streaming,
a connect timeout and a read timeout, and one clear RemoteServerError per failure:
connection refused, timeout, 401/403, 404, an unknown model, other HTTP errors.
The API key is passed in by the caller (it lives in the vault) and never stored here.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from appliance.engine.errors import ContextOverflow, RemoteServerError
from appliance.errors import ImportRefused
from appliance.library import library

CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 120.0


def normalize_base_url(base_url: str) -> str:
    """'http://host:8000' or 'http://host:8000/v1/' -> 'http://host:8000/v1'."""
    try:
        return library.normalize_base_url(base_url)
    except ImportRefused as exc:
        raise RemoteServerError(str(exc)) from None


class OpenAIClient:
    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        read_timeout_s: float = READ_TIMEOUT_S,
    ) -> None:
        self.base_url = normalize_base_url(base_url)
        self.api_key = api_key
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s

    def _open(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        parts = urlsplit(self.base_url + path)
        cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        conn = cls(parts.hostname, parts.port, timeout=self.connect_timeout_s)
        headers = {"Accept": "application/json, text/event-stream"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        try:
            conn.connect()
            conn.sock.settimeout(self.read_timeout_s)
            conn.request(method, parts.path, body=data, headers=headers)
            response = conn.getresponse()
        except ConnectionRefusedError:
            conn.close()
            raise RemoteServerError(
                f"Cannot connect to {self.base_url}: the connection was refused. Check that "
                "the server is running and that the address and port are right."
            ) from None
        except TimeoutError:
            conn.close()
            raise RemoteServerError(
                f"{self.base_url} did not answer within {self.connect_timeout_s:g} s "
                f"(connect) / {self.read_timeout_s:g} s (read). Check the address and the server."
            ) from None
        except OSError as exc:
            conn.close()
            raise RemoteServerError(f"Cannot reach {self.base_url}: {exc}.") from None
        if response.status >= 400:
            detail = _error_detail(response.read(4096))
            conn.close()
            raise _http_error(self.base_url, path, response.status, detail)
        return conn, response

    def get_json(self, path: str) -> Any:
        conn, response = self._open("GET", path, None)
        try:
            return json.loads(response.read())
        except ValueError:
            raise RemoteServerError(
                f"{self.base_url}{path} did not answer with JSON: is this an OpenAI-compatible "
                "server?"
            ) from None
        finally:
            conn.close()

    def models(self) -> list[dict[str, Any]]:
        """The server's /v1/models entries."""
        data = self.get_json("/models")
        items = data.get("data") if isinstance(data, dict) else None
        if not isinstance(items, list):
            raise RemoteServerError(f"{self.base_url}/models did not list models.")
        return [m for m in items if isinstance(m, dict) and isinstance(m.get("id"), str)]

    def stream_chat(self, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """POST /chat/completions with stream=true; yield each SSE data object."""
        conn, response = self._open("POST", "/chat/completions", {**body, "stream": True})
        try:
            while True:
                try:
                    raw = response.readline()
                except TimeoutError:
                    raise RemoteServerError(
                        f"{self.base_url} stopped sending for {self.read_timeout_s:g} s."
                    ) from None
                if not raw:
                    return
                line = raw.decode("utf-8", "replace").strip()
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    return
                event = json.loads(payload)
                if isinstance(event, dict) and event.get("error"):
                    raise RemoteServerError(f"The server reported an error: {event['error']}")
                yield event
        finally:
            conn.close()


def _error_detail(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text[:300]
    error = data.get("error", data.get("detail", data)) if isinstance(data, dict) else data
    if isinstance(error, dict):
        error = error.get("message", error)
    return str(error)[:300]


def _http_error(base_url: str, path: str, status: int, detail: str) -> Exception:
    if status in (401, 403):
        return RemoteServerError(
            f"{base_url} refused the request (HTTP {status}): the API key is missing or wrong. "
            "Store the server's key in the vault for this model."
        )
    if status == 404:
        return RemoteServerError(
            f"{base_url}{path} does not exist (HTTP 404): check the base URL; OpenAI-compatible "
            f"servers serve under /v1. Server said: {detail}"
        )
    if status == 400 and "context" in detail.lower():
        return ContextOverflow(f"The server says the conversation does not fit: {detail}")
    return RemoteServerError(f"{base_url}{path} answered HTTP {status}: {detail}")


def list_remote_models(base_url: str, api_key: str | None = None) -> list[str]:
    """The model names a server offers (its /v1/models), sorted."""
    return sorted(m["id"] for m in OpenAIClient(base_url, api_key).models())


def add_remote_models(
    library: Any, base_url: str, api_key: str | None = None
) -> list[dict[str, Any]]:
    """Register every model the server lists; return the registry entries."""
    return [library.add_remote(base_url, name) for name in list_remote_models(base_url, api_key)]
