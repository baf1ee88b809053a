"""The routed forward: one client request onto the library's router, bytes out as they came.

Why bytes and not LangChain messages: a proxy that re-encoded through ``ChatOllama`` would
lose every field LangChain does not model (``logprobs``, ``context``, ``thinking`` on
``/api/generate``, options it does not know) and add its cost per chunk. So the client's
body goes to the chosen backend as it is, and the backend's NDJSON lines come back as they
are; what the proxy shares with :class:`~langchain_contextharbor.HybridChatOllama` is every
decision around the bytes:

- the plan (``HybridChatOllama._plan``: probes, breakers, VRAM fit, learned speeds),
- admission (:func:`~langchain_contextharbor._admission.admit`: leases, background trials,
  spill-over, release as abandoned when the client goes away),
- the failure rule (:func:`~langchain_contextharbor._failover.settle_failure`: classify once,
  feed the breaker, fail over or not, the commit point),
- the transport's deadlines and protocol check (``_transport.inner_client_kwargs``: the
  phase-timeout transports, the warm first-token deadline, ``Timeouts.total``),
- for embeddings, ``HybridOllamaEmbeddings``' digest check and pin.

The commit gate is the chat model's: lines are held until the first one that carries
something a client shows (content, thinking, a tool call); until then any failure fails
over invisibly. After it a failure cannot move (that would repeat text), so the stream ends
with an :class:`Interrupted` marker the edge writes in its protocol's error framing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
from ollama import ResponseError

from langchain_contextharbor._admission import Lease, admit
from langchain_contextharbor._digests import evidence_predates
from langchain_contextharbor._failover import _Call, _Try, all_failed, settle_failure
from langchain_contextharbor._transport import CALL_DEADLINE, FIRST_TOKEN, inner_client_kwargs
from langchain_contextharbor.backends import BackendConfig
from langchain_contextharbor.errors import (
    AllBackendsFailedError,
    AllBackendsUnreachableError,
    ModelNotAvailableError,
    NoBackendAvailableError,
    StreamInterruptedError,
    TruncatedStreamError,
)
from langchain_contextharbor.sizing import DEFAULT_NUM_CTX

if TYPE_CHECKING:
    from langchain_contextharbor import HybridChatOllama, HybridOllamaEmbeddings
    from langchain_contextharbor._router import Router

__all__ = [
    "AppState",
    "Committed",
    "Interrupted",
    "Upstreams",
    "Whole",
    "dumps",
    "embed",
    "failure_answer",
    "fan_out",
    "routed",
]

logger = logging.getLogger("langchain_contextharbor.serve")

JSON = "application/json; charset=utf-8"
NDJSON = "application/x-ndjson"


# ---------------------------------------------------------------------------- state
@dataclass
class AppState:
    """What the app and the status page share (see the package docstring's contract)."""

    llm: HybridChatOllama
    """The router host: its plan, admission settings and backends are the library's."""
    configs: list[BackendConfig]
    settings: Any
    """The :class:`~langchain_contextharbor.serve.ServeConfig` the app was made with."""
    decisions: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=200))
    """One dict per proxied request, newest last (bounded)."""
    started: float = field(default_factory=time.time)
    upstreams: Upstreams = field(init=False)
    embedders: dict[str, HybridOllamaEmbeddings] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.upstreams = Upstreams(self.configs)

    @property
    def router(self) -> Router:
        return self.llm.router

    def embedder(self, model: str) -> HybridOllamaEmbeddings:
        """One embeddings object per model, sharing the router: its digest pin is the
        proxy's memory of which build that model's vectors come from."""
        emb = self.embedders.get(model)
        if emb is None:
            from langchain_contextharbor import HybridOllamaEmbeddings

            emb = HybridOllamaEmbeddings.from_chat_model(self.llm, model=model)
            self.embedders[model] = emb
        return emb

    def record(self, **decision: Any) -> None:
        decision.setdefault("time", time.time())
        self.decisions.append(decision)

    async def aclose(self) -> None:
        await self.upstreams.aclose()
        for emb in self.embedders.values():
            emb.close()
        self.llm.close()


class Upstreams:
    """One ``httpx.AsyncClient`` per backend and event loop, built from the same pieces as
    the inner ChatOllama clients (plain URL, credentials as headers, phase-timeout
    transport, shared TLS context)."""

    def __init__(self, configs: list[BackendConfig]) -> None:
        self._configs = {c.name: c for c in configs}
        self._clients: dict[tuple[str, int], httpx.AsyncClient] = {}

    def client(self, name: str) -> httpx.AsyncClient:
        key = (name, id(asyncio.get_running_loop()))
        c = self._clients.get(key)
        if c is None:
            kw = inner_client_kwargs(self._configs[name])
            extra = dict(kw["client_kwargs"])
            headers = extra.pop("headers", {})
            c = httpx.AsyncClient(
                base_url=kw["base_url"],
                headers=headers,
                transport=kw["async_client_kwargs"]["transport"],
                timeout=None,  # the transport sets every phase's deadline itself
                **extra,
            )
            self._clients[key] = c
        return c

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for c in clients:
            try:
                await c.aclose()
            except RuntimeError:  # another loop's client: that loop is gone
                pass


# ---------------------------------------------------------------------------- results
@dataclass
class Whole:
    """A complete answer: status, body, media type (nothing was sent to the client yet)."""

    status: int
    body: bytes
    media_type: str = JSON


@dataclass
class Interrupted:
    """The stream's backend failed after the commit point; ``message`` says so."""

    message: str


@dataclass
class Committed:
    """A stream past its commit point: ``held`` lines (the first substantive one last), then
    ``rest`` (the remaining lines, maybe an :class:`Interrupted` at the end). ``backend``
    serves it; closing ``rest`` early releases the slot as abandoned."""

    held: list[bytes]
    rest: AsyncIterator[bytes | Interrupted]
    backend: str


def dumps(obj: Any) -> bytes:
    """JSON as Go's ``json.Marshal`` writes it (no spaces, UTF-8 as is)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def error_body(message: str) -> bytes:
    return dumps({"error": message})


def _error_text(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace")
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return str(data["error"])
    return body.decode("utf-8", "replace")


def _one_line(text: str) -> str:
    return "; ".join(s.strip() for s in text.splitlines() if s.strip())


def failure_answer(exc: AllBackendsFailedError, last: tuple[int, bytes] | None) -> Whole:
    """The answer when every backend failed: Ollama's own 404 text when no backend has the
    model (the last backend's body, verbatim), 503 when nothing could be reached or tried,
    else 502; the error names what was tried (URLs without credentials)."""
    if isinstance(exc, ModelNotAvailableError):
        if last is not None and last[0] == 404:
            return Whole(404, last[1])
        return Whole(404, error_body(f"model '{exc.model}' not found"))
    status = 503 if isinstance(exc, (AllBackendsUnreachableError, NoBackendAvailableError)) else 502
    return Whole(status, error_body("contextharbor: " + _one_line(str(exc))))


def _arm(att: _Try) -> tuple[Any, Any] | None:
    """The chat model's deadlines for the transport while the request goes out."""
    if att.deadline is None and att.first_token is None:
        return None
    total = CALL_DEADLINE.set(att.deadline) if att.deadline is not None else None
    first = FIRST_TOKEN.set(att.first_token) if att.first_token is not None else None
    return (total, first)


def _disarm(armed: tuple[Any, Any] | None) -> None:
    if armed is None:
        return
    for var, tok in ((FIRST_TOKEN, armed[1]), (CALL_DEADLINE, armed[0])):
        if tok is not None:
            try:
                var.reset(tok)
            except ValueError:
                pass


async def _lines(response: httpx.Response) -> AsyncIterator[bytes]:
    """The NDJSON lines of ``response`` (without their newline; blank lines dropped)."""
    buf = b""
    async for chunk in response.aiter_raw():
        buf += chunk
        while True:
            i = buf.find(b"\n")
            if i < 0:
                break
            line, buf = buf[:i], buf[i + 1 :]
            if line.strip():
                yield line
    if buf.strip():
        yield buf


def _is_done(line: bytes) -> dict[str, Any] | None:
    """The final chunk's fields when ``line`` is Ollama's ``done: true`` chunk, else None."""
    if b'"done"' not in line:
        return None
    try:
        data = json.loads(line)
    except ValueError:
        return None
    return data if isinstance(data, dict) and data.get("done") is True else None


def chat_substantive(data: dict[str, Any]) -> bool:
    msg = data.get("message")
    return isinstance(msg, dict) and bool(
        msg.get("content") or msg.get("thinking") or msg.get("tool_calls")
    )


def generate_substantive(data: dict[str, Any]) -> bool:
    return bool(data.get("response") or data.get("thinking") or data.get("tool_calls"))


def num_ctx_of(body: dict[str, Any]) -> int:
    options = body.get("options")
    if isinstance(options, dict):
        n = options.get("num_ctx")
        if isinstance(n, int) and not isinstance(n, bool) and n > 0:
            return n
    return DEFAULT_NUM_CTX


# ---------------------------------------------------------------------------- chat/generate
async def routed(
    state: AppState,
    *,
    endpoint: str,
    path: str,
    model: str,
    payload: bytes,
    stream: bool,
    num_ctx: int,
    substantive: Callable[[dict[str, Any]], bool],
) -> Whole | Committed:
    """Send ``payload`` to ``path`` on the admitted backends in plan order (see the module
    docstring). Returns a :class:`Whole` answer (a non-streamed one, a stream that ended
    before anything substantive, a backend's own request error, or the all-failed error)
    or a :class:`Committed` stream."""
    llm = state.llm
    router = llm.router
    if router.evidence_due():
        await router.await_evidence()
    call = _Call(model, num_ctx, llm._plan(model, num_ctx))
    last: tuple[int, bytes] | None = None
    handled = llm.exceptions_to_handle
    upstreams = state.upstreams
    for lease in admit(
        router, call, spillover=llm.spillover, retries=llm.max_retries, replan=llm._plan
    ):
        att = _Try(call, lease, True)
        response: httpx.Response | None = None
        keep = False
        try:
            armed = _arm(att)
            try:
                client = upstreams.client(lease.name)
                request = client.build_request(
                    "POST", path, content=payload, headers={"content-type": "application/json"}
                )
                response = await client.send(request, stream=True)
            finally:
                _disarm(armed)
            status = response.status_code
            if status >= 400:
                body = await response.aread()
                last = (status, lease.cfg.scrub(body.decode("utf-8", "replace")).encode())
                raise ResponseError(_error_text(body), status)
            if not stream:
                body = await response.aread()
                info = _is_done(body.strip())
                if info is None:
                    raise TruncatedStreamError(lease.name)
                elapsed = time.perf_counter() - att.started
                lease.succeeded(elapsed, elapsed, model, info)
                _decide(state, endpoint, call, lease, 200)
                return Whole(200, body)
            held: list[bytes] = []
            lines = _lines(response)
            committed = False
            async for line in lines:
                if line.startswith(b'{"error"'):
                    raise ResponseError(_error_text(line), -1)
                held.append(line)
                try:
                    data = json.loads(line)
                except ValueError as exc:
                    raise json.JSONDecodeError(str(exc), "", 0) from None
                if isinstance(data, dict) and substantive(data):
                    committed = True
                    break
                if isinstance(data, dict) and data.get("done") is True:
                    break
            if not committed:
                info = _is_done(held[-1]) if held else None
                if info is None:
                    raise TruncatedStreamError(lease.name)
                elapsed = time.perf_counter() - att.started
                lease.succeeded(elapsed, None, model, info)
                _decide(state, endpoint, call, lease, 200)
                return Whole(200, b"".join(h + b"\n" for h in held), NDJSON)
            att.committed = True
            att.delivered = len(held)
            ttft = time.perf_counter() - att.started
            keep = True
            return Committed(
                held,
                _rest(state, endpoint, call, att, response, lines, ttft, handled),
                lease.name,
            )
        except Exception as exc:
            if response is not None:
                await response.aclose()
                response = None
            try:
                move_on = settle_failure(att, exc, handled)
            except Exception as final:  # a spent total deadline
                _decide(state, endpoint, call, lease, 504, error=str(final))
                return Whole(504, error_body(_one_line(str(final))))
            if not move_on:
                if last is not None:
                    _decide(state, endpoint, call, lease, last[0])
                    return Whole(*last)
                _decide(state, endpoint, call, lease, 500)
                return Whole(500, error_body(lease.cfg.scrub(str(exc))))
            continue
        finally:
            if not keep:
                if response is not None:
                    await response.aclose()
                lease.__exit__(None, None, None)
    failure = all_failed(call, state.configs)
    answer = failure_answer(failure, last)
    _decide(state, endpoint, call, None, answer.status, error=_one_line(str(failure)))
    return answer


async def _rest(
    state: AppState,
    endpoint: str,
    call: _Call,
    att: _Try,
    response: httpx.Response,
    lines: AsyncIterator[bytes],
    ttft: float,
    handled: Any,
) -> AsyncIterator[bytes | Interrupted]:
    """The committed stream's remaining lines; the lease is released when it ends (or the
    client goes away: then as abandoned, as a cancelled ``astream`` is)."""
    lease = att.lease
    last: bytes | None = None
    status = 200
    try:
        try:
            async for line in lines:
                if line.startswith(b'{"error"'):
                    raise ResponseError(_error_text(line), -1)
                if att.deadline is not None:
                    att.check_deadline()
                att.delivered += 1
                last = line
                yield line
            info = _is_done(last) if last is not None else None
            if info is None:
                raise TruncatedStreamError(lease.name)
            lease.succeeded(time.perf_counter() - att.started, ttft, call.model, info)
        except Exception as exc:
            status = 502
            try:
                settle_failure(att, exc, handled)
                text = lease.cfg.scrub(str(exc))
            except StreamInterruptedError as si:
                text = str(si)
            except Exception as other:
                text = lease.cfg.scrub(str(other))
            yield Interrupted(
                f"contextharbor: {_one_line(text)}; the answer cannot continue on another "
                "backend without repeating text"
            )
    finally:
        await response.aclose()
        lease.__exit__(None, None, None)
        _decide(state, endpoint, call, lease, status)


def _decide(
    state: AppState,
    endpoint: str,
    call: _Call,
    lease: Lease | None,
    status: int,
    error: str | None = None,
) -> None:
    d: dict[str, Any] = {
        "endpoint": endpoint,
        "model": call.model,
        "backend": None if lease is None else lease.name,
        "reasons": [] if lease is None else list(lease.reasons),
        "attempts": [a.as_dict() for a in call.attempts],
        "skipped": [{"backend": s.backend, "reason": s.reason} for s in call.skipped],
        "status": status,
    }
    if error is not None:
        d["error"] = error
    state.record(**d)


# ---------------------------------------------------------------------------- embeddings
async def embed(state: AppState, *, endpoint: str, path: str, model: str, payload: bytes) -> Whole:
    """One embed request through ``HybridOllamaEmbeddings``' admission and digest check:
    a backend holding another build of ``model`` than the one this proxy already embedded
    with is refused (the vectors would not match an index made with the first)."""
    from langchain_contextharbor._digests import _Call as EmbedCall

    emb = state.embedder(model)
    router = state.router
    if router.evidence_due():
        await router.await_evidence()
    call = EmbedCall(model, emb.num_ctx or DEFAULT_NUM_CTX)
    last: tuple[int, bytes] | None = None
    for lease in emb._candidates(call):
        if not isinstance(lease, Lease):
            await asyncio.wrap_future(lease)  # a stale probe: the digest is read again
            continue
        with lease:
            att = _Try(call, lease, False)
            sent = router.clock()
            try:
                response = await state.upstreams.client(lease.name).post(
                    path, content=payload, headers={"content-type": "application/json"}
                )
                body = response.content
                if response.status_code >= 400:
                    last = (
                        response.status_code,
                        lease.cfg.scrub(body.decode("utf-8", "replace")).encode(),
                    )
                    raise ResponseError(_error_text(body), response.status_code)
            except Exception as exc:
                if not emb._failed(call, att, exc):
                    _decide(state, endpoint, call, lease, last[0] if last else 500)
                    if last is not None:
                        return Whole(*last)
                    return Whole(500, error_body(lease.cfg.scrub(str(exc))))
                continue
            lease.succeeded(time.perf_counter() - att.started, None)
            digest: str = lease.vetted
            if evidence_predates(router, lease.name, sent):  # a re-pull may have landed
                rechecked = emb._recheck(call, lease, await emb._aread_tags(lease.name))
                if rechecked is None:  # refused as the library refuses: the next backend
                    continue
                digest = rechecked
            try:
                book = emb._s.digests
                book.pin(
                    call,
                    lease.name,
                    digest,
                    model=emb.model,
                    allow_mismatch=emb.allow_digest_mismatch,
                    configs=emb._s.configs,
                )
            except Exception as exc:  # two first calls raced to servers with two builds
                _decide(state, endpoint, call, lease, 409, error=_one_line(str(exc)))
                return Whole(409, error_body("contextharbor: " + _one_line(str(exc))))
            _decide(state, endpoint, call, lease, 200)
            return Whole(200, body)
    failure = emb._all_failed(call)
    if isinstance(failure, AllBackendsFailedError):
        answer = failure_answer(failure, last)
        if answer.status == 404 and last is None:
            answer = Whole(404, error_body(f'model "{model}" not found, try pulling it first'))
    else:  # the digest mismatch: a server could answer, with vectors of another build
        answer = Whole(409, error_body("contextharbor: " + _one_line(str(failure))))
    _decide(state, endpoint, call, None, answer.status, error=_one_line(str(failure)))
    return answer


# ---------------------------------------------------------------------------- fan-out GETs
async def fan_out(
    state: AppState, method: str, path: str, payload: bytes | None = None
) -> dict[str, tuple[int, Any] | str]:
    """``path`` on every backend at once, each within its probe timeout: name -> (status,
    parsed JSON) or the reason it did not answer (scrubbed)."""

    async def one(cfg: BackendConfig) -> tuple[int, Any] | str:
        token = FIRST_TOKEN.set(cfg.timeouts.probe)
        try:
            client = state.upstreams.client(cfg.name)
            r = await client.request(
                method,
                path,
                content=payload,
                headers={"content-type": "application/json"} if payload is not None else None,
            )
            try:
                data = r.json()
            except ValueError:
                data = None
            return (r.status_code, data)
        except Exception as exc:
            return cfg.scrub(f"{type(exc).__name__}: {exc}")
        finally:
            FIRST_TOKEN.reset(token)

    results = await asyncio.gather(*(one(c) for c in state.configs))
    return {c.name: r for c, r in zip(state.configs, results, strict=True)}


async def first_answer(
    state: AppState, path: str, payload: bytes, order: list[str]
) -> tuple[str | None, int, bytes]:
    """``POST path`` on the backends in ``order`` until one answers other than 404 (for
    ``/api/show``: the model's details live where the model is)."""
    last: tuple[str | None, int, bytes] = (None, 502, error_body("no backend answered"))
    for name in order:
        cfg = next(c for c in state.configs if c.name == name)
        token = FIRST_TOKEN.set(cfg.timeouts.probe)
        try:
            r = await state.upstreams.client(name).post(
                path, content=payload, headers={"content-type": "application/json"}
            )
        except Exception as exc:
            last = (name, 502, error_body(cfg.scrub(f"{name}: {type(exc).__name__}: {exc}")))
            continue
        finally:
            FIRST_TOKEN.reset(token)
        body = cfg.scrub(r.content.decode("utf-8", "replace")).encode()
        if r.status_code == 404:
            last = (name, 404, body)
            continue
        return (name, r.status_code, body)
    return last
