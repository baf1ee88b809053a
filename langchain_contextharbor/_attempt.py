"""One attempt of a routed chat call: what the sync and async call loops share per chunk.

Why a module of its own: the chat model's call loops (:mod:`._chat_calls`) only iterate; what
each chunk means (held back until the commit point, stamped with the routing metadata,
counted for the abandonment report), the end-of-stream checks and the deadlines published
to the transport are decided here, once, on plain values: the call's
:class:`~._failover._Call` record and the admission's :class:`~._admission.Lease`. Nothing
here knows the LangChain model; :func:`_to_result` turns the assembled chunk into the
``ChatResult`` ``invoke`` returns.

Hot path: the loops reference these names as globals of their module and call
:meth:`_Attempt.feed` only until the attempt passes chunks straight on (see
:attr:`_Attempt.quick`); nothing here adds a call per chunk.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextvars import Token
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult

from langchain_contextharbor._admission import Lease
from langchain_contextharbor._failover import _Call, _Try, metadata
from langchain_contextharbor._transport import CALL_DEADLINE, FIRST_TOKEN
from langchain_contextharbor.errors import EmptyResponseError, TruncatedStreamError

__all__ = ["_Abandoned", "_Armed", "_Attempt", "_arm", "_disarm", "_substantive", "_to_result"]


def _substantive(chunk: ChatGenerationChunk) -> bool:
    """Whether a chunk carries something the caller sees (the stream's commit point)."""
    msg = chunk.message
    if msg.content:
        return True
    if isinstance(msg, AIMessageChunk) and (msg.tool_call_chunks or msg.tool_calls):
        return True
    return bool(msg.additional_kwargs.get("reasoning_content"))


_Armed = tuple[Token[float | None] | None, Token[float | None] | None]


def _arm(att: _Attempt) -> _Armed | None:
    """Publish the call's deadline (``Timeouts.total``, off by default) and the attempt's
    warm first-token deadline (when no model load is coming) to the transport while the
    request goes out and its head is awaited; nothing is set when neither applies."""
    if att.deadline is None and att.first_token is None:
        return None
    total = None
    if att.deadline is not None:
        att.check_deadline()
        total = CALL_DEADLINE.set(att.deadline)
    first = FIRST_TOKEN.set(att.first_token) if att.first_token is not None else None
    return (total, first)


def _disarm(armed: _Armed | None) -> None:
    if armed is None:
        return
    if armed[1] is not None:
        try:
            FIRST_TOKEN.reset(armed[1])
        except ValueError:  # finalised in another context: nothing of ours is left there
            pass
    if armed[0] is not None:
        try:
            CALL_DEADLINE.reset(armed[0])
        except ValueError:
            pass


class _Abandoned:
    """Marker the invoke loop yields when an attempt whose tokens callbacks already saw
    failed and the call moves on to another backend (see
    :data:`~langchain_contextharbor.chat_models.ABANDONED_EVENT`)."""

    __slots__ = ("data",)

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data


class _Attempt(_Try):
    """One try on one backend: what the sync and async call loops share per chunk.

    ``feed`` takes each chunk from the inner stream and returns the chunks to hand on
    now; ``finish`` runs the end-of-stream checks and returns what was still held. With
    ``gate`` (streaming) chunks are held until the first substantive one (the commit
    point: after it a failure can no longer fall back). Without it (invoke) every chunk
    is handed on at once (for ``on_llm_new_token``) but nothing ever commits: the
    caller's result is assembled from one complete attempt, so any failure falls back.
    It knows the call only as plain values (its record and the admission's lease).
    """

    __slots__ = ("gate", "held", "last", "passing", "quick", "ttft")

    def __init__(self, call: _Call, lease: Lease, gate: bool) -> None:
        # The fields of _Try, set here rather than by a call to its __init__ (hot path).
        self.call = call
        self.lease = lease
        self.cfg = cfg = lease.cfg
        self.started = time.perf_counter()
        self.delivered = 0
        self.chars = 0
        self.committed = False
        total = cfg.timeouts.total
        self.deadline = None if total is None else call.started + total
        """``time.monotonic()`` by which this call must end (``Timeouts.total``)."""
        self.first_token = lease.first_token
        """The lease's warm first-token deadline (None: the configured one applies)."""
        self.gate = gate
        self.ttft: float | None = None
        self.held: list[ChatGenerationChunk] = []
        self.last: ChatGenerationChunk | None = None
        self.passing = False
        """Every further chunk goes straight on (committed, or not gated and stamped)."""
        self.quick = False
        """Passing with no total deadline to check: the call loops then do :meth:`feed`'s
        book-keeping inline (last chunk, count, characters), with no call per chunk."""

    def feed(self, chunk: ChatGenerationChunk) -> Sequence[ChatGenerationChunk]:
        """The chunks to yield now (often none while held, or just this one)."""
        self.last = chunk
        if self.deadline is not None:
            self.check_deadline()
        if self.passing:  # the common case: one chunk in, the same chunk out
            self.delivered += 1
            content = chunk.message.content
            if type(content) is str:
                self.chars += len(content)
            return (chunk,)
        held = self.held
        held.append(chunk)
        if not self.gate or _substantive(chunk):
            # Streaming: the first substantive chunk commits. Invoke: every chunk goes on
            # at once (for on_llm_new_token), the first one stamped, nothing committed.
            self.committed = self.gate
            self.passing = True
            self.quick = self.deadline is None
            self.ttft = time.perf_counter() - self.started
            self._stamp()
            self.held = []
            self.delivered += len(held)
            chars = self.chars
            for c in held:  # mostly one chunk: no generator expression to create
                chars += len(c.text)
            self.chars = chars
            return held
        return ()

    def finish(self) -> list[ChatGenerationChunk]:
        """End-of-stream checks (raise to fail over); returns the chunks still held."""
        last = self.last
        if last is None:
            raise EmptyResponseError(self.cfg.name)
        info = last.generation_info  # Ollama's closing chunk: ChatOllama copies it here
        if not (info and info.get("done") is True):
            raise TruncatedStreamError(self.cfg.name)
        held = self.held
        if held:  # a stream with no visible content
            self._stamp()
            self.held = []
        return held

    def succeeded(self) -> None:
        last = self.last
        self.lease.succeeded(
            time.perf_counter() - self.started,
            self.ttft,
            self.call.model,
            last.generation_info if last is not None else None,
        )

    def abandoned(self, exc: BaseException) -> _Abandoned | None:
        """After a failover: the marker that tells observers which tokens to discard."""
        if self.delivered == 0:
            return None
        data = {
            "backend": self.cfg.name,
            "chunks": self.delivered,
            "chars": self.chars,
            "error_class": type(exc).__name__,
        }
        self.call.abandoned.append(data)
        return _Abandoned(data)

    def _stamp(self) -> None:
        """Routing metadata goes on the first chunk the caller sees."""
        self.held[0].message.response_metadata.update(
            metadata(self.call, self.cfg, self.lease.reasons)
        )


def _to_result(final: ChatGenerationChunk, run_id: str | None = None) -> ChatResult:
    """The ``ChatResult`` of one complete attempt's chunks, summed into ``final``."""
    msg = final.message
    tool_calls = msg.tool_calls if isinstance(msg, AIMessageChunk) else []
    usage = msg.usage_metadata if isinstance(msg, AIMessageChunk) else None
    message = AIMessage(
        content=msg.content,
        additional_kwargs=msg.additional_kwargs,
        response_metadata=msg.response_metadata,
        tool_calls=tool_calls,
        usage_metadata=usage,
        id=msg.id or run_id,
    )
    return ChatResult(
        generations=[ChatGeneration(message=message, generation_info=final.generation_info)]
    )
