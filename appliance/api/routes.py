"""The /v1 routes: OpenAI's HTTP API over the appliance's own engine.

`Api(get_services).routes()` returns the Starlette routes that appliance_server.py mounts
beside the Streamlit UI, on the same port. Every request goes through the same host,
queue and resident model as the browser sessions (`Host.chat(..., source="api")`): a
request for another model switches it the way the UI does, under the switch rule.

- Keys: `Authorization: Bearer <key>` on every request, checked against the hashes in
  config/api-keys.json (appliance.api.keys). The API is off (403 `api_disabled`) until
  the first key exists. It never takes the master password and never unlocks the vault.
  Failed attempts are limited per client address (appliance.api.ratelimit).
- Errors have OpenAI's shape (openai_format.ApiError): 404 `model_not_found`, 400
  `context_length_exceeded` with the token counts (a request is never cut to fit: the
  host runs it with truncate=False), 400 for bad parameters, 429 with Retry-After when
  the queue is full, 503 with the reason while a model cannot be loaded.
- Streams are server-sent events ending with `data: [DONE]`. The first piece of a reply
  is awaited before the answer starts, so a load failure or an over-long prompt still
  gets its status code. A client that goes away cancels its generation at once: the
  stream's generator is closed, which cancels the request in the host (llama-server
  frees its slot).
- Stateless, like OpenAI's API: nothing is written to the encrypted history.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route

from appliance.api import openai_format as fmt
from appliance.api.keys import ApiKeyError, KeyStore
from appliance.api.openai_format import ApiError
from appliance.api.ratelimit import FailureLimiter
from appliance.engine import (
    BackendUnavailable,
    ContextOverflow,
    EngineBusy,
    EngineError,
    InvalidChat,
    InvalidOptions,
    ModelLoadError,
    RemoteServerError,
    WorkerCrashed,
)
from appliance.engine.generation import Generation
from appliance.engine.options import DEFAULT_CTX_CAP
from appliance.engine.prompt import StopFilter
from appliance.errors import ApplianceError, UnknownModel

BUSY_RETRY_S = 5
OWNER = "offline-llm-switcher"


class Api:
    """The endpoints, with the services they share (one instance per server process)."""

    def __init__(self, get_services: Callable[[], Any], keys: KeyStore | None = None,
                 limiter: FailureLimiter | None = None) -> None:  # fmt: skip
        self.get_services = get_services
        self.keys = keys or KeyStore()
        self.limiter = limiter or FailureLimiter()

    def routes(self) -> list[BaseRoute]:
        return [
            Mount("/v1", routes=[
                Route("/models", self.models, methods=["GET"]),
                Route("/models/{model_id:path}", self.model, methods=["GET"]),
                Route("/chat/completions", self.chat_completions, methods=["POST"]),
                Route("/completions", self.completions, methods=["POST"]),
                Route("/embeddings", self.embeddings, methods=["POST"]),
            ]),
        ]  # fmt: skip

    # -- authentication -----------------------------------------------------------------
    def authorize(self, request: Request) -> None:
        client = request.client.host if request.client else "unknown"
        wait = self.limiter.retry_after(client)
        if wait:
            raise ApiError(429, f"Too many failed authentications from {client}; try again in "
                           f"{wait} s.", "rate_limit_error", "too_many_failed_authentications",
                           headers={"Retry-After": str(wait)})  # fmt: skip
        if not self.keys.any():
            raise ApiError(403, "The API is off: no API key exists yet. Create one on the "
                           "Settings page or with `appliance api-keys create NAME`.",
                           "permission_error", "api_disabled")  # fmt: skip
        scheme, _, secret = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            self._failed(client, "No API key: send the header 'Authorization: Bearer "
                         "<key>'.", "missing_api_key")  # fmt: skip
        if self.keys.verify(secret.strip()) is None:
            self._failed(client, "Invalid API key. Create one on the Settings page or with "
                         "`appliance api-keys create NAME`.", "invalid_api_key")  # fmt: skip

    def _failed(self, client: str, message: str, code: str) -> None:
        blocked = self.limiter.failed(client)
        headers = {"WWW-Authenticate": "Bearer"}
        if blocked:
            headers["Retry-After"] = str(blocked)
        raise ApiError(401, message, "authentication_error", code, headers=headers)

    # -- endpoints ------------------------------------------------------------------------
    async def models(self, request: Request) -> Response:
        async def answer() -> Response:
            data = await run_in_threadpool(self._model_list)
            return JSONResponse({"object": "list", "data": data})

        return await self._handle(request, answer)

    async def model(self, request: Request) -> Response:
        async def answer() -> Response:
            wanted = request.path_params["model_id"]
            for item in await run_in_threadpool(self._model_list):
                if item["id"] == wanted:
                    return JSONResponse(item)
            raise _not_found(wanted)

        return await self._handle(request, answer)

    async def chat_completions(self, request: Request) -> Response:
        async def answer() -> Response:
            call = fmt.chat_request(await _body(request))
            host = self.get_services().host
            gen = await _call(host.chat, call.model, call.messages,
                              system_prompt=call.system or "", settings=call.sampling.settings,
                              truncate=False, source="api")  # fmt: skip
            return await self._reply(request, gen, call.model, call.sampling, chat=True)

        return await self._handle(request, answer)

    async def completions(self, request: Request) -> Response:
        async def answer() -> Response:
            call = fmt.completion_request(await _body(request))
            host = self.get_services().host
            gen = await _call(host.chat, call.model, [{"role": "user", "content": call.prompt}],
                              settings=call.sampling.settings, raw=True, truncate=False,
                              source="api")  # fmt: skip
            return await self._reply(request, gen, call.model, call.sampling, chat=False)

        return await self._handle(request, answer)

    async def embeddings(self, request: Request) -> Response:
        async def answer() -> Response:
            model, inputs, encoding = fmt.embedding_request(await _body(request))
            vectors, tokens = await _call(self.get_services().host.embed, model, inputs)
            return JSONResponse({
                "object": "list", "model": model,
                "data": [{"object": "embedding", "index": i,
                          "embedding": fmt.embedding_vector(v, encoding)}
                         for i, v in enumerate(vectors)],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            })  # fmt: skip

        return await self._handle(request, answer)

    # -- helpers --------------------------------------------------------------------------
    async def _handle(self, request: Request, answer: Callable[[], Any]) -> Response:
        try:
            try:
                self.authorize(request)
            except ApiKeyError as exc:  # config/api-keys.json is damaged: no key is valid
                raise ApiError(503, str(exc), "server_error", "api_keys_unreadable") from None
            return await answer()
        except ApiError as error:
            return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    def _model_list(self) -> list[dict[str, Any]]:
        services = self.get_services()
        status = services.host.status()
        items = []
        for entry in services.library.entries():
            if entry.status != "present" and not entry.is_remote:
                continue
            context = entry.metadata.context_length
            if status.model_id == entry.id and status.context_length:
                context = status.context_length  # what the loaded model really serves
            elif not entry.is_remote:
                context = min(context or DEFAULT_CTX_CAP, DEFAULT_CTX_CAP)
            items.append({
                "id": entry.id, "object": "model", "created": _created(entry.added_at),
                "owned_by": OWNER, "name": entry.name, "backend": entry.backend,
                "format": entry.format, "context_length": context,
                "loaded": status.model_id == entry.id and status.phase in ("ready", "generating"),
                "meta": {"n_ctx": context},
            })  # fmt: skip
        return items

    async def _reply(self, request: Request, gen: Generation, model: str,
                     sampling: fmt.Sampling, *, chat: bool) -> Response:  # fmt: skip
        reply = _Reply(gen, sampling.stop)
        # A client that goes away while its request waits in the queue, or while the
        # answer is built, cancels it; once streaming, the stream's own close does.
        watcher = asyncio.create_task(_cancel_on_disconnect(request, gen))
        try:
            first, ended = await reply.pull()  # a load failure or an overflow: its status code
            if not sampling.stream:
                return await self._whole(reply, first, ended, model, chat)
        except BaseException:
            gen.cancel()
            raise
        finally:
            watcher.cancel()
        ident = fmt.new_id("chatcmpl" if chat else "cmpl")
        return StreamingResponse(
            _events(reply, first, ended, ident, model, chat, sampling.include_usage),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @staticmethod
    async def _whole(reply: _Reply, first: str, ended: bool, model: str, chat: bool) -> Response:
        parts = [first]
        while not ended:
            piece, ended = await reply.pull()
            parts.append(piece)
        text, use = "".join(parts), reply.usage()
        if chat:
            ident = fmt.new_id("chatcmpl")
            return JSONResponse(fmt.chat_answer(ident, model, text, reply.finish(), use))
        ident = fmt.new_id("cmpl")
        return JSONResponse(fmt.completion_answer(ident, model, text, reply.finish(), use))


class _Reply:
    """A Generation read from async code, one piece at a time, cut at stop strings."""

    def __init__(self, gen: Generation, stop: list[str]) -> None:
        self.gen = gen
        self.filter = StopFilter(stop) if stop else None
        self._it = iter(gen)
        self._ended = False
        self.hit_stop = False
        self.pieces = 0  # pieces read: a token count when the runner's comes too late

    async def pull(self) -> tuple[str, bool]:
        """(text to send now, whether the reply has ended); raises ApiError."""
        try:
            return await run_in_threadpool(self._pull)
        except EngineError as exc:
            raise _engine_error(exc) from None

    def _pull(self) -> tuple[str, bool]:
        if self._ended:
            return "", True
        try:
            text = next(self._it)
            self.pieces += 1
        except StopIteration:
            self._ended = True
            return (self.filter.flush() if self.filter else ""), True
        if self.filter is None:
            return text, False
        out = self.filter.feed(text)
        if self.filter.hit:
            self.hit_stop = self._ended = True
            self.gen.cancel()
        return out, self._ended

    def finish(self) -> str:
        result = self.gen.result
        if self.hit_stop or result is None:
            return "stop"
        return "length" if result.finish == "length" else "stop"

    def usage(self) -> dict[str, int]:
        result = self.gen.wait(5) or self.gen.result
        prompt = result.prompt_tokens if result else self.gen.prompt_tokens
        # A reply cut at a stop string was cancelled: its result exists at once, and the
        # runner's own count arrives later (add_usage), so count the pieces read too.
        return fmt.usage(prompt, max(result.completion_tokens if result else 0, self.pieces))


async def _events(reply: _Reply, first: str, ended: bool, ident: str, model: str, chat: bool,
                  include_usage: bool) -> AsyncIterator[bytes]:  # fmt: skip
    """The SSE stream; closing it early (the client went away) cancels the request."""

    def chunk(text: str | None, finish: str | None = None) -> dict[str, Any]:
        if chat:
            delta = {} if text is None else {"content": text}
            return fmt.chat_chunk(ident, model, delta, finish)
        return fmt.completion_answer(ident, model, text or "", finish, None)

    try:
        if chat:
            yield _sse(fmt.chat_chunk(ident, model, {"role": "assistant", "content": ""}))
        piece = first
        while True:
            if piece:
                yield _sse(chunk(piece))
            if ended:
                break
            try:
                piece, ended = await reply.pull()
            except ApiError as error:  # mid-stream: the status is already sent
                yield _sse(error.body())
                return
        yield _sse(chunk(None, reply.finish()))
        if include_usage:
            use = reply.usage()
            if chat:
                yield _sse(fmt.chat_chunk(ident, model, {}, use=use, choices=False))
            else:
                yield _sse({**fmt.completion_answer(ident, model, "", None, use), "choices": []})
        yield b"data: [DONE]\n\n"
    finally:
        if not reply.gen.done:
            reply.gen.cancel()


def _sse(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, ensure_ascii=False).encode() + b"\n\n"


async def _cancel_on_disconnect(request: Request, gen: Generation) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            gen.cancel()
            return


async def _body(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except (ValueError, UnicodeDecodeError):
        raise fmt.bad("The request body is not valid JSON.") from None


async def _call(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """A host call in a worker thread, its errors as OpenAI errors."""
    try:
        return await run_in_threadpool(func, *args, **kwargs)
    except (EngineError, ApplianceError) as exc:
        raise _engine_error(exc) from None


def _not_found(model: str) -> ApiError:
    return ApiError(404, f"The model {model!r} does not exist in this appliance's library; "
                    "GET /v1/models lists the ids.", "invalid_request_error",
                    "model_not_found", "model")  # fmt: skip


def _engine_error(exc: ApplianceError) -> ApiError:
    message = str(exc)
    if isinstance(exc, UnknownModel):
        return ApiError(404, message, "invalid_request_error", "model_not_found", "model")
    if isinstance(exc, ContextOverflow):
        return ApiError(400, message, "invalid_request_error", "context_length_exceeded",
                        "messages")  # fmt: skip
    if isinstance(exc, InvalidChat | InvalidOptions):
        return ApiError(400, message, "invalid_request_error")
    if isinstance(exc, EngineBusy):
        return ApiError(429, message, "rate_limit_error", "queue_full",
                        headers={"Retry-After": str(BUSY_RETRY_S)})  # fmt: skip
    if isinstance(exc, ModelLoadError | BackendUnavailable | WorkerCrashed | RemoteServerError):
        return ApiError(503, message, "server_error", "model_unavailable",
                        headers={"Retry-After": str(BUSY_RETRY_S)})  # fmt: skip
    return ApiError(500, message, "server_error", "internal_error")


def _created(added_at: str) -> int:
    try:
        return int(datetime.fromisoformat(added_at).timestamp())
    except ValueError:
        return 0
