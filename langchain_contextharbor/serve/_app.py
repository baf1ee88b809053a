"""The ASGI app: Ollama's and OpenAI's routes over :mod:`._forward`, and the door's lock."""

from __future__ import annotations

import contextlib
import hmac
import importlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from langchain_contextharbor.backends import BackendConfig
from langchain_contextharbor.serve import _openai as oai
from langchain_contextharbor.serve._forward import (
    JSON,
    NDJSON,
    AppState,
    Committed,
    Interrupted,
    Whole,
    chat_substantive,
    dumps,
    embed,
    error_body,
    fan_out,
    first_answer,
    generate_substantive,
    num_ctx_of,
    routed,
)
from langchain_contextharbor.sizing import DEFAULT_NUM_CTX

__all__ = ["DEFAULT_MAX_BODY", "DEFAULT_PORT", "ServeConfig", "create_app"]

logger = logging.getLogger("langchain_contextharbor.serve")

DEFAULT_PORT = 11400
"""Next to Ollama's 11434 (GPU) and the CPU server's 11435, and not either of them."""
DEFAULT_MAX_BODY = 32 * 1024 * 1024
"""Largest request body accepted (bytes): a chat with a few base64 images fits."""

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]


@dataclass(frozen=True)
class ServeConfig:
    """How the proxy listens and what it lets in (the backends are the library's)."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    """Bearer keys a client must send (``Authorization: Bearer <key>``); empty: none."""
    max_body_bytes: int = DEFAULT_MAX_BODY
    decisions_kept: int = 200


# ---------------------------------------------------------------------------- the lock
def _openai_path(path: str) -> bool:
    return path.startswith("/v1/") or path == "/v1"


def _json_response(status: int, body: bytes | dict[str, Any], **headers: str) -> Response:
    content = body if isinstance(body, bytes) else dumps(body)
    return Response(content, status_code=status, media_type=JSON, headers=headers or None)


def _refusal(path: str, status: int, message: str, code: str | None = None) -> Response:
    """An error in the shape the path's clients read: OpenAI's under ``/v1``, else Ollama's."""
    if _openai_path(path):
        return _json_response(status, oai.error(status, message, code))
    return _json_response(status, {"error": message})


class Door:
    """ASGI middleware: bearer keys (when configured) and the body size limit.

    A pure ASGI layer (not ``BaseHTTPMiddleware``), so a request costs a header scan and
    no extra task. ``HEAD /`` stays open: it is Ollama's liveness check (the ``ollama``
    CLI's heartbeat) and says nothing but "running"."""

    def __init__(self, app: ASGIApp, keys: Sequence[str], max_body: int) -> None:
        self.app = app
        self.keys = [k.encode() for k in keys]
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        length: int | None = None
        auth: bytes | None = None
        for k, v in scope["headers"]:
            if k == b"authorization":
                auth = v
            elif k == b"content-length":
                with contextlib.suppress(ValueError):
                    length = int(v)
        if self.keys and not (scope["method"] == "HEAD" and path == "/"):
            if not self._allowed(auth):
                resp = _refusal(
                    path,
                    401,
                    "unauthorized: a valid API key is required (Authorization: Bearer <key>)",
                    "invalid_api_key",
                )
                resp.headers["www-authenticate"] = "Bearer"
                await resp(scope, receive, send)
                return
        if length is not None and length > self.max_body:
            await self._too_large(path)(scope, receive, send)
            return
        await self.app(scope, _Counted(receive, self.max_body), send)

    def _allowed(self, auth: bytes | None) -> bool:
        if auth is None or not auth[:7].lower() == b"bearer ":
            return False
        given = auth[7:].strip()
        ok = False
        for key in self.keys:  # compare with every key: the time says nothing about which
            ok |= hmac.compare_digest(given, key)
        return ok

    def _too_large(self, path: str) -> Response:
        return _refusal(
            path, 413, f"request body too large (limit {self.max_body} bytes)", "body_too_large"
        )


class BodyTooLarge(Exception):
    pass


class _Counted:
    """``receive`` that raises :class:`BodyTooLarge` once the body passes the limit (a
    chunked upload has no Content-Length to check up front)."""

    __slots__ = ("_limit", "_receive", "_seen")

    def __init__(self, receive: Any, limit: int) -> None:
        self._receive, self._limit, self._seen = receive, limit, 0

    async def __call__(self) -> Any:
        message = await self._receive()
        if message["type"] == "http.request":
            self._seen += len(message.get("body", b""))
            if self._seen > self._limit:
                raise BodyTooLarge
        return message


async def _body(request: Request, limit: int) -> bytes | Response:
    try:
        return await request.body()
    except BodyTooLarge:
        return _refusal(
            request.url.path,
            413,
            f"request body too large (limit {limit} bytes)",
            "body_too_large",
        )


async def _model_request(
    request: Request, limit: int, *, aliases: tuple[str, ...] = ("model",)
) -> tuple[bytes, dict[str, Any], str] | Response:
    """An Ollama request naming a model: its raw body, its JSON object and the model (the
    first of ``aliases`` given), or the answer Ollama gives when one is missing (413, 400)."""
    raw = await _body(request, limit)
    if isinstance(raw, Response):
        return raw
    data, problem = _parse(raw)
    if data is None:
        return _json_response(400, {"error": problem})
    model = next((data.get(k) for k in aliases if data.get(k)), None)
    if not isinstance(model, str) or not model:
        return _json_response(400, {"error": "model is required"})
    return raw, data, model


def _parse(raw: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """The JSON object of a body, or Ollama's 400 text for why not."""
    if not raw.strip():
        return None, "missing request body"
    try:
        data = json.loads(raw)
    except ValueError as exc:
        return None, f"invalid character in request body: {exc}"
    if not isinstance(data, dict):
        return None, "json: cannot unmarshal request body: not an object"
    return data, None


# ---------------------------------------------------------------------------- responses
class _Streamed(StreamingResponse):
    """A streamed answer that closes its iterator when the client goes away, so the
    backend's slot is released at once (as abandoned), not when the GC finds it."""

    def __init__(self, gen: AsyncIterator[bytes], media_type: str) -> None:
        super().__init__(gen, media_type=media_type)
        self._gen = gen

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            aclose = getattr(self._gen, "aclose", None)
            if aclose is not None:
                await aclose()


def _whole(w: Whole) -> Response:
    return Response(w.body, status_code=w.status, media_type=w.media_type)


async def _ollama_lines(c: Committed) -> AsyncIterator[bytes]:
    try:
        yield b"".join(h + b"\n" for h in c.held)
        async for line in c.rest:
            if isinstance(line, Interrupted):
                yield error_body(line.message) + b"\n"  # Ollama's mid-stream error line
                return
            yield line + b"\n"
    finally:  # the client went away: release the backend's slot now, not at GC
        aclose = getattr(c.rest, "aclose", None)
        if aclose is not None:
            await aclose()


def _sort_key(stamp: Any) -> float:
    return float(oai._created(stamp)) if isinstance(stamp, str) else 0.0


# ---------------------------------------------------------------------------- the app
def create_app(
    config: ServeConfig | None = None,
    *,
    backends: Sequence[BackendConfig | dict[str, Any]] | None = None,
    **router_options: Any,
) -> Starlette:
    """The proxy as an ASGI app (serve it with uvicorn, or mount it).

    ``backends``: as ``HybridChatOllama(backends=...)`` (None: ``OLLAMA_GPU_URL`` /
    ``OLLAMA_CPU_URL``); ``router_options``: any other ``HybridChatOllama`` routing field
    (``timeouts``, ``breaker``, ``shared_state`` for fleet mode, ``clock`` ...). The app's
    :class:`AppState` is ``app.state.contextharbor``."""
    from collections import deque

    from langchain_contextharbor import HybridChatOllama

    config = config or ServeConfig()
    options = dict(router_options)
    if backends is not None:
        options["backends"] = list(backends)
    # The model is a placeholder: every request names its own, and plans are per model.
    llm = HybridChatOllama(model="contextharbor-serve", **options)
    state = AppState(llm=llm, configs=llm.backend_configs, settings=config)
    state.decisions = deque(maxlen=max(1, config.decisions_kept))
    limit = config.max_body_bytes

    async def chat(request: Request) -> Response:
        return await _native(request, "/api/chat", chat_substantive)

    async def generate(request: Request) -> Response:
        return await _native(request, "/api/generate", generate_substantive)

    async def _native(
        request: Request, path: str, substantive: Callable[[dict[str, Any]], bool]
    ) -> Response:
        got = await _model_request(request, limit)
        if isinstance(got, Response):
            return got
        raw, data, model = got
        stream = data.get("stream") is not False
        out = await routed(
            state,
            endpoint=path,
            path=path,
            model=model,
            payload=raw,
            stream=stream,
            num_ctx=num_ctx_of(data),
            substantive=substantive,
        )
        if isinstance(out, Whole):
            return _whole(out)
        return _Streamed(_ollama_lines(out), NDJSON)

    async def embed_route(request: Request) -> Response:
        got = await _model_request(request, limit)
        if isinstance(got, Response):
            return got
        raw, _, model = got
        path = request.url.path
        return _whole(await embed(state, endpoint=path, path=path, model=model, payload=raw))

    async def show(request: Request) -> Response:
        got = await _model_request(request, limit, aliases=("model", "name"))
        if isinstance(got, Response):
            return got
        raw, _, model = got
        _, status, body = await first_answer(state, "/api/show", raw, _order(state, model))
        return Response(body, status_code=status, media_type=JSON)

    async def tags(request: Request) -> Response:
        merged = await _tags(state)
        if merged is None:
            return _json_response(503, {"error": _down(state, "/api/tags")})
        return _json_response(200, {"models": merged})

    async def ps(request: Request) -> Response:
        answers = await fan_out(state, "GET", "/api/ps")
        rows: list[dict[str, Any]] = []
        any_ok = False
        for name, got in answers.items():
            if isinstance(got, tuple) and got[0] == 200 and isinstance(got[1], dict):
                any_ok = True
                for m in got[1].get("models") or []:
                    if isinstance(m, dict):
                        rows.append({**m, "backend": name})
        if not any_ok:
            return _json_response(503, {"error": _down(state, "/api/ps")})
        rows.sort(key=lambda m: _sort_key(m.get("expires_at")), reverse=True)
        return _json_response(200, {"models": rows})

    async def version(request: Request) -> Response:
        answers = await fan_out(state, "GET", "/api/version")
        found = [
            got[1]["version"]
            for got in answers.values()
            if isinstance(got, tuple)
            and got[0] == 200
            and isinstance(got[1], dict)
            and isinstance(got[1].get("version"), str)
        ]
        if not found:
            return _json_response(503, {"error": _down(state, "/api/version")})
        # The oldest: a client that checks features by version gets what every backend has.
        return _json_response(200, {"version": min(found, key=_version_key)})

    async def root(request: Request) -> Response:
        return PlainTextResponse("Ollama is running")

    async def unsupported(request: Request) -> Response:
        return _json_response(
            501,
            {
                "error": f"contextharbor serve does not proxy {request.url.path}: run it "
                "against one server (OLLAMA_HOST=<backend host:port> ollama ...)"
            },
        )

    # --- OpenAI ---------------------------------------------------------------------
    async def v1_chat(request: Request) -> Response:
        raw = await _body(request, limit)
        if isinstance(raw, Response):
            return raw
        try:
            req = json.loads(raw) if raw.strip() else None
            body, stream, usage = oai.chat_request(req)
        except ValueError as exc:
            return _json_response(400, oai.error(400, str(exc) or "invalid request body"))
        model = body["model"]
        payload = dumps(body)
        out = await routed(
            state,
            endpoint="/v1/chat/completions",
            path="/api/chat",
            model=model,
            payload=payload,
            stream=stream,
            num_ctx=DEFAULT_NUM_CTX,
            substantive=chat_substantive,
        )
        cid = oai.new_id()
        if isinstance(out, Whole):
            if out.status >= 400:
                return _openai_error(out)
            if not stream:
                return _json_response(200, oai.completion(json.loads(out.body), cid, model))
            lines = [json.loads(x) for x in out.body.splitlines() if x.strip()]
            return _Streamed(_sse(cid, model, usage, _from_list(lines)), "text/event-stream")
        return _Streamed(_sse(cid, model, usage, _from_committed(out)), "text/event-stream")

    async def v1_embeddings(request: Request) -> Response:
        raw = await _body(request, limit)
        if isinstance(raw, Response):
            return raw
        try:
            req = json.loads(raw) if raw.strip() else None
            body, fmt = oai.embed_request(req)
        except ValueError as exc:
            return _json_response(400, oai.error(400, str(exc) or "invalid request body"))
        model = body["model"]
        out = await embed(
            state,
            endpoint="/v1/embeddings",
            path="/api/embed",
            model=model,
            payload=dumps(body),
        )
        if out.status >= 400:
            return _openai_error(out)
        return _json_response(200, oai.embeddings_response(json.loads(out.body), model, fmt))

    async def v1_models(request: Request) -> Response:
        merged = await _tags(state)
        if merged is None:
            return _json_response(503, oai.error(503, _down(state, "/api/tags")))
        return _json_response(200, oai.models_list(merged))

    async def v1_model(request: Request) -> Response:
        model = request.path_params["model"]
        merged = await _tags(state) or []
        for entry in merged:
            if model in (entry.get("name"), entry.get("model")) or (
                ":" not in model and entry.get("name") == f"{model}:latest"
            ):
                return _json_response(200, oai.model_entry(entry))
        return _json_response(404, oai.error(404, f"model '{model}' not found"))

    routes: list[BaseRoute] = []
    routes += _status_routes(state)
    routes += [
        Route("/", root, methods=["GET", "HEAD"]),
        Route("/api/chat", chat, methods=["POST"]),
        Route("/api/generate", generate, methods=["POST"]),
        Route("/api/embed", embed_route, methods=["POST"]),
        Route("/api/embeddings", embed_route, methods=["POST"]),
        Route("/api/show", show, methods=["POST"]),
        Route("/api/tags", tags, methods=["GET", "HEAD"]),
        Route("/api/ps", ps, methods=["GET"]),
        Route("/api/version", version, methods=["GET", "HEAD"]),
        Route("/api/pull", unsupported, methods=["POST"]),
        Route("/api/push", unsupported, methods=["POST"]),
        Route("/api/create", unsupported, methods=["POST"]),
        Route("/api/copy", unsupported, methods=["POST"]),
        Route("/api/delete", unsupported, methods=["DELETE"]),
        Route("/v1/chat/completions", v1_chat, methods=["POST"]),
        Route("/v1/embeddings", v1_embeddings, methods=["POST"]),
        Route("/v1/models", v1_models, methods=["GET"]),
        Route("/v1/models/{model:path}", v1_model, methods=["GET"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await state.aclose()

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={404: _not_found, 405: _not_allowed},
    )
    app.state.contextharbor = state
    app.add_middleware(Door, keys=config.api_keys, max_body=config.max_body_bytes)
    return app


async def _not_found(request: Request, exc: Exception) -> Response:
    """Ollama's (Go's) texts for an unknown path and a wrong method."""
    return PlainTextResponse("404 page not found", status_code=404)


async def _not_allowed(request: Request, exc: Exception) -> Response:
    return PlainTextResponse("405 method not allowed", status_code=405)


def _status_routes(state: AppState) -> list[BaseRoute]:
    """The status page's routes, when its module is there (built separately). A status
    module that is there but fails to import is an error, not a page quietly missing."""
    name = "langchain_contextharbor.serve.status"
    try:
        status = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise
        return []
    return list(status.routes(state))


def _openai_error(out: Whole) -> Response:
    try:
        message = json.loads(out.body).get("error", "")
    except (ValueError, AttributeError):
        message = out.body.decode("utf-8", "replace")
    return _json_response(out.status, oai.error(out.status, str(message)))


async def _from_list(lines: list[dict[str, Any]]) -> AsyncIterator[dict[str, Any] | Interrupted]:
    for line in lines:
        yield line


async def _from_committed(c: Committed) -> AsyncIterator[dict[str, Any] | Interrupted]:
    try:
        for h in c.held:
            yield json.loads(h)
        async for line in c.rest:
            yield line if isinstance(line, Interrupted) else json.loads(line)
    finally:
        aclose = getattr(c.rest, "aclose", None)
        if aclose is not None:
            await aclose()


async def _sse(
    cid: str,
    model: str,
    usage: bool,
    events: AsyncIterator[dict[str, Any] | Interrupted],
) -> AsyncIterator[bytes]:
    created = int(time.time())
    final: dict[str, Any] | None = None
    tools = False
    try:
        async for ev in events:
            if isinstance(ev, Interrupted):
                err = oai.error(502, ev.message, "stream_interrupted")
                yield b"data: " + dumps(err) + b"\n\n"
                return
            out = oai.chunk(ev, cid, model, created)
            choice = out["choices"][0]
            tools = tools or "tool_calls" in choice["delta"]
            if ev.get("done"):
                final = ev
                if tools:  # the answer was a tool call, whichever chunk carried it
                    choice["finish_reason"] = "tool_calls"
            yield b"data: " + dumps(out) + b"\n\n"
        if usage and final is not None:
            u = oai.usage_chunk(final, cid, model, created)
            yield b"data: " + dumps(u) + b"\n\n"
        yield b"data: [DONE]\n\n"
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()


async def _tags(state: AppState) -> list[dict[str, Any]] | None:
    """Every backend's ``/api/tags``, merged by name: the first backend's entry (in
    configuration order), with ``backends`` naming every backend that has the model and,
    when their builds differ, ``digests`` per backend. None when no backend answered."""
    answers = await fan_out(state, "GET", "/api/tags")
    merged: dict[str, dict[str, Any]] = {}
    any_ok = False
    for name, got in answers.items():
        if not (isinstance(got, tuple) and got[0] == 200 and isinstance(got[1], dict)):
            continue
        any_ok = True
        for m in got[1].get("models") or []:
            if not isinstance(m, dict):
                continue
            key = str(m.get("name") or m.get("model"))
            entry = merged.get(key)
            if entry is None:
                merged[key] = {**m, "backends": [name]}
                continue
            entry["backends"].append(name)
            if m.get("digest") != entry.get("digest"):
                digests = entry.setdefault("digests", {entry["backends"][0]: entry.get("digest")})
                digests[name] = m.get("digest")
    if not any_ok:
        return None
    rows = list(merged.values())
    rows.sort(key=lambda m: _sort_key(m.get("modified_at")), reverse=True)
    return rows


def _down(state: AppState, path: str) -> str:
    names = ", ".join(f"{c.name} ({c.safe_url})" for c in state.configs)
    return f"contextharbor: no backend answered {path}; tried {names}"


def _version_key(v: str) -> tuple[int, ...]:
    parts: list[int] = []
    for p in v.split("-")[0].split("."):
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def _order(state: AppState, model: str) -> list[str]:
    """The backends to ask about ``model``: the plan's candidates first, then the rest."""
    try:
        plan = state.llm._plan(model, DEFAULT_NUM_CTX)
        first = [c.backend for c in plan.candidates]
    except Exception:
        first = []
    return first + [c.name for c in state.configs if c.name not in first]
