"""The embeddings' call path: planning a batch, admitting and vetting backends, the loops.

Why a module of its own: this is the part of
:class:`~langchain_contextharbor.HybridOllamaEmbeddings` that runs on every batch, kept apart
from its LangChain surface (fields, construction, public state, ``embed_*``), as
:mod:`~._chat_calls` keeps the chat model's. One batch: :meth:`EmbedCalls._candidates`
plans it (:meth:`EmbedCalls._plan`) and yields the admitted, digest-vetted backends,
:meth:`EmbedCalls._failed` decides whether a failure moves on, and
:meth:`EmbedCalls._succeeded` pins the build; :meth:`EmbedCalls._recheck` re-reads
``/api/tags`` after a batch whose server's evidence predates it. The proxy
(``serve/_forward.py``) calls these same methods. The sync and async loops differ only in
``await``.

Hot path: a mixin's methods are found on the model's type as its own are: no call added.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from langchain_ollama import OllamaEmbeddings

from langchain_contextharbor._admission import Lease, admit_vetted
from langchain_contextharbor._digests import (
    BatchRecord,
    DigestBook,
    _Call,
    evidence_predates,
    stale_probe,
    tags_digests,
)
from langchain_contextharbor._facts import ProbeResult
from langchain_contextharbor._failover import _Try, all_failed, settle_failure
from langchain_contextharbor._pool import InnerPool
from langchain_contextharbor._replies import checked_embeddings
from langchain_contextharbor._router import Router
from langchain_contextharbor.backends import BackendConfig
from langchain_contextharbor.errors import (
    AllBackendsFailedError,
    ConfigurationError,
    EmbeddingInputError,
)
from langchain_contextharbor.routing import RoutePlan, RoutePolicy
from langchain_contextharbor.sizing import DEFAULT_NUM_CTX, GIB

__all__ = ["EmbedCalls"]


class _State:
    """Mutable state behind one HybridOllamaEmbeddings (plain object: cheap to reach)."""

    def __init__(
        self,
        configs: list[BackendConfig],
        router: Router,
        owns_router: bool,
        digests: DigestBook,
    ) -> None:
        self.configs = configs
        self.router = router
        self.owns_router = owns_router
        self.digests = digests
        self.pool: InnerPool[OllamaEmbeddings] = InnerPool(configs)
        self.last_batches: list[BatchRecord] = []
        self.policy: tuple[tuple[Any, ...], RoutePolicy] | None = None


class EmbedCalls:
    """The batch call path of the embeddings (a base of ``HybridOllamaEmbeddings``,
    listed first): planning, admission with digest vetting, failure and success
    bookkeeping, and the per-batch loops ``embed_documents``/``aembed_documents`` run."""

    if TYPE_CHECKING:  # provided by HybridOllamaEmbeddings (its fields and inner clients)
        _s: _State
        model: str
        num_ctx: int | None
        size_threshold_gb: float
        model_sizes: dict[str, float]
        prefer_warm: bool
        spillover: bool
        allow_digest_mismatch: bool
        dimensions: int | None

        def _inner(self, name: str) -> OllamaEmbeddings: ...

        def _ainner(self, name: str) -> OllamaEmbeddings: ...

    # ------------------------------------------------------------------ decisions
    def _plan(self, num_ctx: int) -> RoutePlan:
        s = self._s
        key = (self.size_threshold_gb, self.prefer_warm, self.spillover)
        if s.policy is None or s.policy[0] != key:
            s.policy = (
                key,
                RoutePolicy(
                    size_threshold_bytes=int(self.size_threshold_gb * GIB),
                    prefer_warm=self.prefer_warm,
                    spillover=self.spillover,
                ),
            )
        policy = s.policy[1]
        router = s.router
        router.prepare(self.model)
        router.wait_for_evidence()  # returns at once in a loop: async awaited it already
        try:
            # chat=False: an embedding model is never sent speed-calibration chats.
            return router.plan(
                self.model, num_ctx=num_ctx, sizes=self.model_sizes, policy=policy, chat=False
            )
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None

    def _start(self, texts: Any) -> tuple[list[str], _Call]:
        if isinstance(texts, str):
            raise EmbeddingInputError(
                "embed_documents takes a list of strings, got one str "
                "(use embed_query for a single text)"
            )
        try:
            items = list(texts)
        except TypeError:
            raise EmbeddingInputError(
                f"embed_documents takes a list of strings, got {type(texts).__name__}"
            ) from None
        for i, t in enumerate(items):
            if not isinstance(t, str):
                raise EmbeddingInputError(
                    f"texts[{i}] is {type(t).__name__}, not str: every item to embed must be "
                    "a string (convert documents with doc.page_content)"
                )
        return items, _Call(self.model, self.num_ctx or DEFAULT_NUM_CTX)

    def _candidates(self, call: _Call) -> Iterator[Lease | concurrent.futures.Future[ProbeResult]]:
        """The admitted backends for one batch (:func:`admit_vetted`, as the chat model's
        calls are admitted: background trials, spill-over, release), in plan order minus
        the backends this call gave up on, each one's digest checked on a fresh probe
        first (a stale one is yielded to wait for)."""
        plan = self._plan(call.num_ctx)
        if not call.batches and not call.attempts:
            call.skipped.extend(plan.skipped)
        if call.avoid:
            kept = tuple(c for c in plan.candidates if c.backend not in call.avoid)
            plan = dataclasses.replace(plan, candidates=kept)
        call.plan = plan
        router = self._s.router
        vet = functools.partial(
            self._s.digests.vet,
            call,
            router=router,
            model=self.model,
            allow_mismatch=self.allow_digest_mismatch,
        )
        stale = functools.partial(stale_probe, router)
        return admit_vetted(router, call, vet, stale=stale, spillover=self.spillover)

    def _failed(self, call: _Call, att: _Try, exc: Exception) -> bool:
        """Record a failed attempt by the chat model's rule (:func:`settle_failure`); True
        = try the next backend (and none of this call's later batches goes there again),
        False = re-raise ``exc``."""
        if not settle_failure(att, exc, None):
            return False
        call.avoid.add(att.cfg.name)
        return True

    def _succeeded(
        self,
        call: _Call,
        lease: Lease,
        start: int,
        batch: Sequence[str],
        got: Any,
        seen: int,
        digest: str,
    ) -> list[list[float]]:
        """Pin the build (``digest``: the vetted one, re-read after the batch when the
        evidence was older) and record the batch; ``seen``: the skips and attempts of the
        call when this batch began (more since: another backend was passed over first)."""
        name = lease.name
        # ollama-python already parses each vector into a list: copy only what is not one.
        vectors = [v if isinstance(v, list) else list(v) for v in got]
        if len(vectors) != len(batch):
            raise AllBackendsFailedError(
                self.model,
                call.attempts,
                call.skipped,
                call.exceptions,
                f"backend {name!r} returned {len(vectors)} vectors for {len(batch)} texts",
            )
        s = self._s
        s.digests.pin(
            call,
            name,
            digest,
            model=self.model,
            allow_mismatch=self.allow_digest_mismatch,
            configs=s.configs,
        )
        fallback = len(call.skipped) + len(call.attempts) > seen or bool(call.avoid - {name})
        call.batches.append(BatchRecord(start, start + len(batch), name, digest, fallback))
        return vectors

    def _recheck(
        self, call: _Call, lease: Lease, read: dict[str, str] | BaseException
    ) -> str | None:
        """The build a returned batch is from, by ``/api/tags`` read after it
        (:meth:`DigestBook.recheck`); None: refused, the next backend is tried."""
        return self._s.digests.recheck(
            call,
            lease.name,
            lease.vetted,
            read,
            router=self._s.router,
            model=self.model,
            allow_mismatch=self.allow_digest_mismatch,
        )

    def _read_tags(self, name: str) -> dict[str, str] | BaseException:
        """``/api/tags`` of ``name`` by its own client (deadlines, credentials), as
        name -> digest; the error instead of raising (:meth:`_recheck` refuses then)."""
        try:
            client = self._inner(name)._client
            if client is None:
                raise RuntimeError("no ollama client")
            return tags_digests(client.list())
        except Exception as exc:
            return exc

    async def _aread_tags(self, name: str) -> dict[str, str] | BaseException:
        try:
            client = self._ainner(name)._async_client
            if client is None:
                raise RuntimeError("no ollama client")
            return tags_digests(await client.list())
        except Exception as exc:
            return exc

    def _all_failed(self, call: _Call) -> Exception:
        s = self._s
        if call.mismatched:  # a server could have answered, with vectors of another build
            return s.digests.mismatch(call, self.model, s.configs)
        return all_failed(call, s.configs)

    # ------------------------------------------------------------------ loops
    def _embed_batch(self, call: _Call, start: int, batch: list[str]) -> list[list[float]]:
        """One batch over the admitted backends; this loop and its async twin differ only
        in ``await`` (the decisions are :meth:`_candidates`', :meth:`_failed`'s)."""
        router = self._s.router
        if router.evidence_due():
            router.wait_for_evidence()  # the explicit step before planning
        admitted = self._candidates(call)
        seen = len(call.skipped) + len(call.attempts)
        for lease in admitted:
            if not isinstance(lease, Lease):
                lease.result()  # a stale probe: the digest is read again before sending
                continue
            with lease:  # released on exit, as abandoned unless an outcome was recorded
                att = _Try(call, lease, False)
                sent = router.clock()
                try:
                    got = self._inner(lease.name).embed_documents(batch)
                    got = checked_embeddings(got, len(batch), self.dimensions, lease.name)
                except Exception as exc:
                    if not self._failed(call, att, exc):
                        raise
                    continue
                lease.succeeded(time.perf_counter() - att.started, None)
            digest: str = lease.vetted
            if evidence_predates(router, lease.name, sent):  # a re-pull may have landed
                rechecked = self._recheck(call, lease, self._read_tags(lease.name))
                if rechecked is None:
                    continue
                digest = rechecked
            return self._succeeded(call, lease, start, batch, got, seen, digest)
        raise self._all_failed(call)

    async def _aembed_batch(self, call: _Call, start: int, batch: list[str]) -> list[list[float]]:
        router = self._s.router
        if router.evidence_due():  # so the plan below never blocks the loop (prepared
            router.prepare(self.model)  # first, as the sync plan is: /api/show is awaited too)
            await router.await_evidence()
        admitted = self._candidates(call)
        seen = len(call.skipped) + len(call.attempts)
        for lease in admitted:
            if not isinstance(lease, Lease):
                await asyncio.wrap_future(lease)
                continue
            with lease:
                att = _Try(call, lease, False)
                sent = router.clock()
                try:
                    got = await self._ainner(lease.name).aembed_documents(batch)
                    got = checked_embeddings(got, len(batch), self.dimensions, lease.name)
                except Exception as exc:
                    if not self._failed(call, att, exc):
                        raise
                    continue
                lease.succeeded(time.perf_counter() - att.started, None)
            digest: str = lease.vetted
            if evidence_predates(router, lease.name, sent):
                rechecked = self._recheck(call, lease, await self._aread_tags(lease.name))
                if rechecked is None:
                    continue
                digest = rechecked
            return self._succeeded(call, lease, start, batch, got, seen, digest)
        raise self._all_failed(call)
