"""The chat model's call path: its state, inner models, planning and the two call loops.

Why a module of its own: this is the part of :class:`~langchain_contextharbor.HybridChatOllama`
that runs on every call, kept apart from its LangChain surface (construction, identity,
tools, the ``_generate``/``_stream`` hooks, which hand over to the loops here). One call:
:meth:`RoutedCalls._start` plans it (:meth:`RoutedCalls._plan`, the router's pure plan after
its explicit wait for evidence), :func:`~._admission.admit` yields a lease per admitted
candidate, an :class:`~._attempt._Attempt` decides per chunk, and
:meth:`RoutedCalls._settle_failure` (:func:`~._failover.settle_failure`) decides whether a
failure moves on. The sync and async loops differ only in ``await``/``async for``.

Hot path: everything the loops touch is one attribute or one global away, as it was in
the class itself (a mixin's methods are found on the model's type as its own are).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator, Mapping
from typing import Any, cast

from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGenerationChunk
from langchain_ollama import ChatOllama
from pydantic import PrivateAttr

from langchain_contextharbor._admission import admit
from langchain_contextharbor._attempt import _Abandoned, _arm, _Armed, _Attempt, _disarm
from langchain_contextharbor._chat_fields import ChatFields
from langchain_contextharbor._failover import _Call, all_failed, settle_failure
from langchain_contextharbor._pool import InnerPool
from langchain_contextharbor._request_check import request_num_ctx
from langchain_contextharbor._router import Router
from langchain_contextharbor.backends import BackendConfig
from langchain_contextharbor.errors import AllBackendsFailedError, ConfigurationError
from langchain_contextharbor.routing import RoutePlan, RoutePolicy
from langchain_contextharbor.sizing import DEFAULT_NUM_CTX, GIB

__all__ = ["RoutedCalls"]

logger = logging.getLogger("langchain_contextharbor")


class _HotState:
    """Mutable state behind one HybridChatOllama (router, inner models, caches)."""

    __slots__ = (
        "async_inner",
        "configs",
        "ident",
        "owner",
        "policy_cache",
        "pool",
        "router",
        "sync_inner",
    )

    def __init__(self, configs: list[BackendConfig], router: Router, owner: int) -> None:
        self.owner = owner
        self.configs = configs
        self.router = router
        self.pool: InnerPool[ChatOllama] = InnerPool(configs, spawn=router.submit_background)
        self.sync_inner = self.pool.sync
        """The pool's sync map itself: the call loops read it with one ``dict.get``."""
        self.async_inner = self.pool.per_loop
        """The pool's per-loop map itself, read by :meth:`RoutedCalls._async_inner_built`."""
        self.policy_cache: tuple[tuple[Any, ...], RoutePolicy] | None = None
        self.ident: dict[str, Any] | None = None
        """``_identifying_params`` (langchain-core asks on every call); reset with the
        inner models when ``model`` or a passed-through parameter is set."""


class RoutedCalls(ChatFields):
    """The call path of the chat model (a base of ``HybridChatOllama``, listed first):
    the hot state, the inner ChatOllama per backend, planning, and the routed stream that
    ``_generate``/``_stream`` and their async twins iterate."""

    _hot: _HotState = PrivateAttr()
    """Everything the call path needs, in one plain object: pydantic private attributes
    cost ~2 us per read, this costs one dict lookup per call."""

    @property
    def _h(self) -> _HotState:
        h: _HotState = self.__pydantic_private__["_hot"]  # type: ignore[index]
        if h.owner != id(self):
            # A model_copy() (or copy.copy) shares the private state of its original. Keep
            # the router (breakers and probes describe the servers, not this object), but
            # build inner models from this copy's own parameters.
            h = _HotState(h.configs, h.router, id(self))
            self.__pydantic_private__["_hot"] = h  # type: ignore[index]
        return h

    def _inner_params_changed(self) -> None:
        h = (self.__pydantic_private__ or {}).get("_hot")
        if isinstance(h, _HotState):
            h.ident = None
            h.pool.invalidate()

    def backend_model(self, name: str) -> ChatOllama:
        """The inner ChatOllama of backend ``name`` (for sync use), built on first use; the
        first build also builds the other backends' clients in the background."""
        return self._h.pool.get(name, self._build_inner)

    def _prebuild_sync_inners(self) -> None:
        self._h.pool.prebuild(self._build_inner)

    @property
    def inner_models(self) -> dict[str, ChatOllama]:
        """One ChatOllama per backend name (built on access)."""
        return {c.name: self.backend_model(c.name) for c in self._h.configs}

    def _async_inner_built(self, name: str) -> ChatOllama | None:
        """The inner model of ``name`` for the running loop when it exists (the hot path:
        no coroutine to create and await), else None. ``InnerPool.built_for_loop`` inlined:
        one call less per async attempt."""
        loop = asyncio.get_running_loop()
        entry = self._h.async_inner.get((name, id(loop)))
        if entry is not None and entry[0]() is loop:
            return entry[1]
        return None

    async def _async_backend_model(self, name: str) -> ChatOllama:
        """The inner model of ``name`` for the running loop (``ollama.AsyncClient`` binds
        its connections to the loop of its first request), built on first use."""
        return await self._h.pool.afor_loop(name, self._build_inner)

    # ------------------------------------------------------------------ planning
    def _policy(self, h: _HotState | None = None) -> RoutePolicy:
        key = (self.size_threshold_gb, self.prefer_warm, self.spillover, self.speed_prior)
        if h is None:
            h = self._h
        cached = h.policy_cache
        if cached is not None and cached[0] == key:
            return cached[1]
        policy = RoutePolicy(
            size_threshold_bytes=int(self.size_threshold_gb * GIB),
            prefer_warm=self.prefer_warm,
            spillover=self.spillover,
            prior=self.speed_prior,
        )
        h.policy_cache = (key, policy)
        return policy

    def _num_ctx(self, kwargs: Mapping[str, Any]) -> int:
        options = kwargs.get("options")
        if isinstance(options, Mapping) and isinstance(options.get("num_ctx"), int):
            return int(options["num_ctx"])
        return self.num_ctx or DEFAULT_NUM_CTX

    def _plan(self, model: str, num_ctx: int) -> RoutePlan:
        """The one place calls are planned (select_backend, each call, each retry pass):
        the router's non-blocking prepare step, its wait for evidence (at once inside an
        event loop: the async call awaited it before), then the plan itself (no I/O)."""
        h = self._h
        router = h.router
        router.prepare(model)
        router.wait_for_evidence()
        try:
            return router.plan(
                model, num_ctx=num_ctx, sizes=self.model_sizes, policy=self._policy(h)
            )
        except ValueError as exc:  # a bad value put into model_sizes after construction
            raise ConfigurationError(str(exc)) from None

    # ------------------------------------------------------------------ failover core
    def _start(self, kwargs: dict[str, Any]) -> _Call:
        model = kwargs.get("model") or self.model
        if type(model) is not str:
            model = str(model)
        # Most calls pass no options: then the context size is the instance's (_num_ctx).
        num_ctx = (  # options are checked locally (nothing sent when they are bad)
            request_num_ctx(kwargs["options"], self.num_ctx or DEFAULT_NUM_CTX)
            if "options" in kwargs
            else self.num_ctx or DEFAULT_NUM_CTX
        )
        plan = self._plan(model, num_ctx)
        if logger.isEnabledFor(logging.INFO):  # DEBUG on implies INFO on: one check per call
            logger.info("route %s: %s -> %s", model, plan.summary, plan.backends or "none")
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("route %s details:\n%s", model, plan.explain())
        return _Call(model, num_ctx, plan)

    def _settle_failure(self, att: _Attempt, exc: Exception) -> bool:
        """Record a failed attempt and decide (see :func:`_failover.settle_failure`): True
        = try the next backend, False = the caller re-raises ``exc`` as it is. Shared by
        the sync and async loops, which differ only in how they iterate."""
        return settle_failure(att, exc, self.exceptions_to_handle)

    def _all_failed(self, call: _Call) -> AllBackendsFailedError:
        return all_failed(call, self._h.configs)

    # ------------------------------------------------------------------ the call loops
    def _routed_stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        *,
        gate: bool,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk | _Abandoned]:
        """Try the admitted candidates in order. With ``gate`` (streaming), chunks are held
        back until the first substantive one; without it (invoke), chunks flow at once but
        a death mid-generation still falls back (an :class:`_Abandoned` marker says so).
        Admission lives behind the leases (:mod:`._admission`), the per-chunk decisions in
        :class:`_Attempt`, the failure decision in :mod:`._failover`: this loop and its
        async twin only iterate, and differ only in ``await``/``async for``."""
        h = self._h
        router = h.router
        if router.evidence_due():
            router.wait_for_evidence()  # the explicit step before planning (and the twin's)
        call = self._start(kwargs)
        if stop is None:
            stop = self.stop or None
        retries, spill = self.max_retries, self.spillover
        for lease in admit(router, call, spillover=spill, retries=retries, replan=self._plan):
            with lease:  # released on exit, as abandoned unless an outcome was recorded
                att = _Attempt(call, lease, gate)
                inner = h.sync_inner.get(lease.name)
                if inner is None:
                    inner = self.backend_model(lease.name)
                stream = cast(
                    Generator[ChatGenerationChunk, None, None],
                    inner._iterate_over_stream(messages, stop, **kwargs),
                )
                armed: _Armed | None = None
                try:
                    armed = _arm(att)
                    for chunk in stream:
                        if armed is not None:
                            _disarm(armed)
                            armed = None
                        if att.quick:  # passing on, no deadline: see _Attempt.quick
                            att.last = chunk
                            att.delivered += 1
                            content = chunk.message.content
                            if type(content) is str:
                                att.chars += len(content)
                            yield chunk
                        else:
                            yield from att.feed(chunk)
                    tail = att.finish()
                except Exception as exc:  # not GeneratorExit nor cancellation: no verdict
                    if not self._settle_failure(att, exc):
                        raise
                    marker = att.abandoned(exc)
                    if marker is not None:
                        yield marker
                    continue
                finally:
                    if armed is not None:
                        _disarm(armed)
                    stream.close()
                yield from tail
                att.succeeded()
                return
        raise self._all_failed(call)

    async def _arouted_stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        *,
        gate: bool,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk | _Abandoned]:
        """The async twin of :meth:`_routed_stream`; the decisions are shared."""
        h = self._h
        router = h.router
        if router.evidence_due():  # so _start's plan never blocks the loop; prepare first,
            router.prepare(str(kwargs.get("model") or self.model))  # as the sync plan does,
            await router.await_evidence()  # so the model's /api/show is waited for too
        call = self._start(kwargs)
        if stop is None:
            stop = self.stop or None
        retries, spill = self.max_retries, self.spillover
        for lease in admit(router, call, spillover=spill, retries=retries, replan=self._plan):
            with lease:
                att = _Attempt(call, lease, gate)
                inner = self._async_inner_built(lease.name)
                if inner is None:
                    inner = await self._async_backend_model(lease.name)
                stream = cast(
                    AsyncGenerator[ChatGenerationChunk, None],
                    inner._aiterate_over_stream(messages, stop, **kwargs),
                )
                armed: _Armed | None = None
                try:
                    armed = _arm(att)
                    async for chunk in stream:
                        if armed is not None:
                            _disarm(armed)
                            armed = None
                        if att.quick:  # the same pass-through as the sync loop's
                            att.last = chunk
                            att.delivered += 1
                            content = chunk.message.content
                            if type(content) is str:
                                att.chars += len(content)
                            yield chunk
                        else:
                            for out in att.feed(chunk):
                                yield out
                    tail = att.finish()
                except Exception as exc:
                    if not self._settle_failure(att, exc):
                        raise
                    marker = att.abandoned(exc)
                    if marker is not None:
                        yield marker
                    continue
                finally:
                    if armed is not None:
                        _disarm(armed)
                    await stream.aclose()
                for out in tail:
                    yield out
                att.succeeded()
                return
        raise self._all_failed(call)
