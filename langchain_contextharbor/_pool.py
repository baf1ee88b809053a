"""The inner-client pool: one inner LangChain model per backend, built once, closed once.

Why a pool of its own: the chat model (one ``ChatOllama`` per backend) and the embeddings
(one ``OllamaEmbeddings`` per backend) need the same lifecycle, and two hand-written copies
had drifted (the embeddings never closed a client, nor dropped one built with a parameter
since changed). The rules, once:

- **Sync**: ``sync`` maps a backend name to its inner model, built on first use under a
  lock, so concurrent first calls build one. It is a plain dict on purpose: the call loops
  read it with one ``dict.get`` per attempt.
- **Async**: ``ollama.AsyncClient`` binds its connection pool to the event loop of its
  first request, so there is one inner model per (backend, running loop), keyed with a
  weak reference to the loop (a second ``asyncio.run()`` gets fresh clients). Each one is
  held by a small async generator (its *keeper*) that the loop itself finalises at
  shutdown (``asyncio.run`` calls ``shutdown_asyncgens``), so the clients of a finished
  loop are closed on that loop instead of being dropped with open sockets.
- **Invalidation**: the owner calls :meth:`InnerPool.invalidate` when a parameter the inner
  models carry changes; the next use builds them again.
- **Closing**: :meth:`InnerPool.close` closes the sync clients, :meth:`InnerPool.aclose`
  those of the running loop; the owner stays usable (the next call builds again).

The pool knows nothing of chat or embeddings: the owner passes the ``build`` function
(``BackendConfig -> inner model``) on each use, so a model copy with other parameters
builds from its own.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Any, Generic, TypeVar

from langchain_contextharbor._transport import ssl_context_ready
from langchain_contextharbor.backends import BackendConfig

__all__ = ["InnerPool"]

logger = logging.getLogger("langchain_contextharbor")

T = TypeVar("T")
_Entry = tuple["weakref.ref[asyncio.AbstractEventLoop]", T, AsyncGenerator[None, None]]


async def _keeper(inner: Any) -> AsyncGenerator[None, None]:
    """Holds an async inner model's clients open for the life of its event loop."""
    try:
        yield
    finally:
        client = getattr(inner, "_async_client", None)
        if client is not None:
            try:
                await client.close()
            except Exception:  # pragma: no cover - closing must never raise into the caller
                logger.debug("closing an async inner client failed", exc_info=True)


def _start_keeper(inner: Any) -> AsyncGenerator[None, None]:
    """A keeper for ``inner``, registered with the running loop and parked at its yield.

    ``asend`` registers the generator with the loop's async-generator hooks when it is
    called; its body reaches ``yield`` without awaiting anything, so one ``send`` runs it
    there with no trip through the event loop (and the sync path can use it too)."""
    keeper = _keeper(inner)
    step = keeper.asend(None)
    try:
        step.send(None)
    except StopIteration:
        return keeper
    raise RuntimeError("the keeper awaited before its yield")  # pragma: no cover


def _close_sync(inner: Any) -> None:
    client = getattr(inner, "_client", None)
    if client is not None:
        try:
            client.close()
        except Exception:  # pragma: no cover - closing must never raise into the caller
            logger.debug("closing an inner client failed", exc_info=True)


class InnerPool(Generic[T]):
    """The inner models of one owner: a sync map and a per-event-loop async map."""

    __slots__ = ("configs", "lock", "per_loop", "spawn", "sync")

    def __init__(
        self,
        configs: Sequence[BackendConfig],
        spawn: Callable[[Callable[[], None]], None] | None = None,
    ) -> None:
        self.configs = {c.name: c for c in configs}
        self.sync: dict[str, T] = {}
        """backend name -> inner model for sync calls (read with ``dict.get`` per call)."""
        self.per_loop: dict[tuple[str, int], _Entry[T]] = {}
        """(backend name, ``id(loop)``) -> (weak ref to the loop, inner model, its keeper)."""
        self.lock = threading.Lock()
        self.spawn = spawn
        """Runs a function off the hot path (the router's workers): after the first sync
        build, the other backends' clients are built there (~40 ms each), so the first
        failover does not pay for them. None: built on first use only."""

    # ------------------------------------------------------------------ sync
    def get(self, name: str, build: Callable[[BackendConfig], T]) -> T:
        """The sync inner model of backend ``name``, built on first use."""
        inner = self.sync.get(name)
        if inner is not None:
            return inner
        cfg = self.configs[name]
        with self.lock:
            inner = self.sync.get(name)
            if inner is not None:
                return inner
            inner = self.sync[name] = build(cfg)
            first = len(self.sync) == 1
        if first and self.spawn is not None and len(self.configs) > 1:
            self.spawn(lambda: self.prebuild(build))
        return inner

    def prebuild(self, build: Callable[[BackendConfig], T]) -> None:
        """Build every backend's sync inner model now."""
        for name in self.configs:
            self.get(name, build)

    # ------------------------------------------------------------------ async
    def built_for_loop(self, name: str) -> T | None:
        """The inner model of ``name`` for the running loop when it exists, else None:
        the hot path, with no coroutine to create and await."""
        loop = asyncio.get_running_loop()
        entry = self.per_loop.get((name, id(loop)))
        if entry is not None and entry[0]() is loop:
            return entry[1]
        return None

    def for_loop(self, name: str, build: Callable[[BackendConfig], T]) -> T:
        """The inner model of ``name`` for the running loop, built inline when missing."""
        inner = self.built_for_loop(name)
        if inner is not None:
            return inner
        return self._adopt(name, build(self.configs[name]))[0]

    async def afor_loop(self, name: str, build: Callable[[BackendConfig], T]) -> T:
        """:meth:`for_loop`, except that a build which must first load the CA bundle
        (35-95 ms, once per process) runs off the event loop; later builds cost ~0.1 ms."""
        inner = self.built_for_loop(name)
        if inner is not None:
            return inner
        cfg = self.configs[name]
        tls = not cfg.plain_url.startswith("http://")
        if ssl_context_ready(cfg.verify, cfg.client_kwargs.get("cert"), tls=tls):
            inner = build(cfg)
        else:
            inner = await asyncio.get_running_loop().run_in_executor(None, build, cfg)
        inner, loser = self._adopt(name, inner)
        if loser is not None:
            await loser.aclose()  # another task of this loop built one meanwhile
        return inner

    def _adopt(self, name: str, inner: T) -> tuple[T, AsyncGenerator[None, None] | None]:
        """Register ``inner`` for the running loop unless another was meanwhile: (the one
        in use, the keeper to close or None). Entries of closed loops are dropped here
        (their keepers closed the clients at loop shutdown)."""
        loop = asyncio.get_running_loop()
        keeper = _start_keeper(inner)
        key = (name, id(loop))
        with self.lock:
            for k, (ref, *_) in list(self.per_loop.items()):
                lp = ref()
                if lp is None or lp.is_closed():
                    del self.per_loop[k]
            entry = self.per_loop.get(key)
            if entry is None or entry[0]() is not loop:
                self.per_loop[key] = (weakref.ref(loop), inner, keeper)
                return inner, None
        return entry[1], keeper

    # ------------------------------------------------------------------ lifecycle
    def invalidate(self) -> None:
        """Forget every inner model (a parameter they carry changed): built again on use.
        Dropped keepers are finalised, and their clients closed, by their own loops."""
        with self.lock:
            self.sync.clear()
            self.per_loop.clear()

    def close(self) -> None:
        """Close and forget the sync inner models' clients."""
        with self.lock:
            inners = list(self.sync.values())
            self.sync.clear()
        for inner in inners:
            _close_sync(inner)

    async def aclose(self) -> None:
        """Close and forget the running loop's async inner models' clients."""
        loop = asyncio.get_running_loop()
        with self.lock:
            mine = [k for k, (ref, *_) in self.per_loop.items() if ref() is loop]
            keepers = [self.per_loop.pop(k)[2] for k in mine]
        for keeper in keepers:
            await keeper.aclose()
