"""HybridOllamaEmbeddings: the RAG half, routed like the chat model and safe across builds.

Why not ``OllamaEmbeddings(base_url=gpu)``: a RAG chain built on ``HybridChatOllama`` then
dies with the GPU server anyway, because its retriever stays pointed there. And pointing
the retriever at the other server is worse than failing: an embedding index is only valid
for the one *build* of the model that made it, and two servers can hold different builds
under the same name (pulled on different days). Vectors of another build land in another
space: the vector store keeps answering, with the wrong documents.

So this class routes each batch with the same planner, breakers, timeouts and classifier
as :class:`~langchain_contextharbor.HybridChatOllama` (and can share one router with it),
and it checks the model's digest on a server (``/api/tags``, read by the router's probes)
before sending there, and once more (one ``/api/tags`` read) after a batch returns from a
server whose last probe predates the batch, so a re-pull between probes is caught before
the batch's vectors are believed. The first digest it embeds with (or ``expected_digest``)
is the one the index uses; a server with another one is refused with
:class:`~langchain_contextharbor.errors.EmbeddingDigestMismatchError`, unless the user opts
in with ``allow_digest_mismatch=True`` (then the mix is allowed and marked).
"""

from __future__ import annotations

import logging
from typing import Any

from langchain_core.embeddings import Embeddings
from langchain_ollama import OllamaEmbeddings
from pydantic import ConfigDict, Field, PrivateAttr, field_validator, model_validator

from langchain_contextharbor._config import RoutedFields, check_side_kwargs, with_client_kwargs
from langchain_contextharbor._digests import BatchRecord, DigestBook, strip_digest
from langchain_contextharbor._embed_calls import EmbedCalls, _State
from langchain_contextharbor._failover import _Call as _PlannedCall
from langchain_contextharbor._failover import all_failed
from langchain_contextharbor._router import Router
from langchain_contextharbor._settings import check_seconds
from langchain_contextharbor._transport import MaskedClientKwargs
from langchain_contextharbor.backends import (
    BackendConfig,
)
from langchain_contextharbor.errors import (
    ConfigurationError,
    EmbeddingInputError,
    at_init,
)
from langchain_contextharbor.sizing import DEFAULT_NUM_CTX

__all__ = ["BatchRecord", "HybridOllamaEmbeddings"]

logger = logging.getLogger("langchain_contextharbor")

# OllamaEmbeddings parameters passed to every inner client unchanged (the options among
# them reach /api/embed's ``options`` through OllamaEmbeddings' own ``_default_params``).
_PASSTHROUGH = (
    "dimensions",
    "keep_alive",
    "num_ctx",
    "num_gpu",
    "num_thread",
    "mirostat",
    "mirostat_eta",
    "mirostat_tau",
    "repeat_last_n",
    "repeat_penalty",
    "temperature",
    "stop",
    "tfs_z",
    "top_k",
    "top_p",
)


class _InnerOllamaEmbeddings(MaskedClientKwargs, OllamaEmbeddings):
    """The OllamaEmbeddings of one backend (client kwargs masked in reprs and dumps)."""


class HybridOllamaEmbeddings(EmbedCalls, RoutedFields, Embeddings):
    """Embeddings over several Ollama servers, with failover and digest safety.

    Setup:
        The same two servers as :class:`~langchain_contextharbor.HybridChatOllama`
        (``OLLAMA_GPU_URL`` / ``OLLAMA_CPU_URL``, or ``backends=``), and the *same build* of
        the embedding model pulled on each (``contextharbor models`` shows the digests).

    Instantiate:
        .. code-block:: python

            from langchain_contextharbor import HybridChatOllama, HybridOllamaEmbeddings

            llm = HybridChatOllama(model="llama3.1:8b")
            emb = HybridOllamaEmbeddings.from_chat_model(llm, model="nomic-embed-text")
            # or HybridOllamaEmbeddings(model="nomic-embed-text") with its own router

    Use:
        ``embed_documents``/``embed_query`` and the async ``aembed_*`` forms. Large lists go
        in batches of ``batch_size``; when a backend fails part-way, the remaining batches
        go to the next one and the finished ones are kept. The output order is the input's.

    Digest safety:
        ``emb.digest`` is the build in use (store it beside your index and pass it back as
        ``expected_digest=`` next time; a prefix of 12+ hex characters, as ``ollama list``
        prints, is enough). A server with another build is refused with
        :class:`~langchain_contextharbor.errors.EmbeddingDigestMismatchError`;
        ``allow_digest_mismatch=True`` accepts it and sets ``emb.mixed_digests``.
    """

    _inner_class = _InnerOllamaEmbeddings
    _passthrough = _PASSTHROUGH

    # OllamaEmbeddings forbids unknown arguments: a typo is a ConfigurationError naming it.
    model_config = ConfigDict(**RoutedFields.model_config, extra="forbid")

    # Shared with HybridChatOllama and documented there (RoutedFields): model, backends,
    # gpu_url, cpu_url, base_url, num_ctx, num_gpu, num_thread, timeout, timeouts,
    # size_threshold_gb, model_sizes, prefer_warm, spillover, breaker, probe_ttl,
    # background_probes, clock, nvml, host_memory.
    router: Router | None = Field(default=None, exclude=True, repr=False)
    """A router to share (``llm.router`` of a HybridChatOllama): one set of probes, health
    cache and breakers for the chat model and the retriever. Its backends are used, and
    ``backends``/``base_url``/``timeout`` and the router settings here are not."""

    batch_size: int = 64
    """Texts per request; a failure costs at most one batch of work."""
    expected_digest: str | None = None
    """The build the index was made with (from ``emb.digest`` of an earlier run)."""
    allow_digest_mismatch: bool = False
    """Accept vectors from another build (then ``mixed_digests`` is set and a warning logged)."""

    dimensions: int | None = None
    """Truncate each vector to this many dimensions (models trained for it, e.g.
    ``nomic-embed-text`` v1.5); None: the model's full size. Part of the index's identity,
    like the digest: keep it fixed for one index."""
    keep_alive: int | None = None
    """Seconds the server keeps the model loaded after a batch (``0`` unloads at once,
    ``-1`` keeps it). None: the server's default (5 minutes)."""

    # --- OllamaEmbeddings' client and validation arguments
    client_kwargs: dict[str, Any] | None = Field(default=None, exclude=True, repr=False)
    """OllamaEmbeddings' argument: httpx client options applied to every backend (a
    backend's own ``client_kwargs``/``headers`` win per key); ``headers`` are sent on every
    request, held as secrets. Use ``timeout=``/``timeouts=`` instead of a ``timeout``."""
    sync_client_kwargs: dict[str, Any] | None = Field(default=None, exclude=True, repr=False)
    """httpx options of the sync clients only, merged over ``client_kwargs`` (as
    OllamaEmbeddings merges them; ``headers`` per header)."""
    async_client_kwargs: dict[str, Any] | None = Field(default=None, exclude=True, repr=False)
    """As ``sync_client_kwargs``, for the async clients."""
    validate_model_on_init: bool = False
    """Probe every backend at construction and raise, when none can serve ``model``, the
    typed error a call would raise, also a ``ValueError`` as OllamaEmbeddings raises
    (:class:`~langchain_contextharbor.errors.ModelValidationError`)."""

    # --- OllamaEmbeddings' options, sent in /api/embed's ``options`` as it sends them
    # (most do not change an embedding; they are accepted, and sent, for drop-in use)
    mirostat: int | None = None
    """Mirostat sampling (0 off, 1, 2)."""
    mirostat_eta: float | None = None
    """Mirostat's learning rate."""
    mirostat_tau: float | None = None
    """Mirostat's target perplexity."""
    repeat_last_n: int | None = None
    """Tokens the repeat penalty looks back over."""
    repeat_penalty: float | None = None
    """Strength of the repeat penalty."""
    temperature: float | None = None
    """Sampling temperature."""
    stop: list[str] | None = None
    """Stop sequences."""
    tfs_z: float | None = None
    """Tail-free sampling."""
    top_k: int | None = None
    """Sample from the k likeliest tokens."""
    top_p: float | None = None
    """Nucleus sampling threshold."""

    _s: _State = PrivateAttr()

    @classmethod
    def from_chat_model(cls, llm: Any, *, model: str, **kwargs: Any) -> HybridOllamaEmbeddings:
        """Embeddings that share ``llm``'s router (probes, health cache, breakers) and its
        routing knobs (size threshold, prefer_warm, spillover)."""
        for knob in ("size_threshold_gb", "prefer_warm", "spillover"):
            kwargs.setdefault(knob, getattr(llm, knob))
        return cls(model=model, router=llm.router, **kwargs)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)  # RoutedFields: one ConfigurationError, inputs hidden
        if self.validate_model_on_init:
            self._validate_model()

    def _validate_model(self) -> None:
        """OllamaEmbeddings' ``validate_model_on_init``, over every backend: probe them all
        now and raise the typed error a call would raise when none can serve the model."""
        s = self._s
        s.router.refresh(self.model)
        num_ctx = self.num_ctx or DEFAULT_NUM_CTX
        plan = self._plan(num_ctx)
        if not plan.candidates:
            self.close()
            raise at_init(all_failed(_PlannedCall(self.model, num_ctx, plan), s.configs))

    @field_validator("dimensions")
    @classmethod
    def _positive_dimensions(cls, v: int | None) -> int | None:
        """Checked here, not by the first call (whose error named an internal class)."""
        if v is not None and (isinstance(v, bool) or v < 1):
            raise ValueError("must be a whole number > 0 or None")
        return v

    @model_validator(mode="after")
    def _setup(self) -> HybridOllamaEmbeddings:
        self._check_fields("nomic-embed-text")
        check_side_kwargs("sync_client_kwargs", self.sync_client_kwargs)
        check_side_kwargs("async_client_kwargs", self.async_client_kwargs)
        if self.batch_size < 1:
            raise ConfigurationError(f"batch_size must be >= 1, got {self.batch_size!r}")
        if self.expected_digest is not None:
            d = strip_digest(self.expected_digest)
            if len(d) < 12 or any(ch not in "0123456789abcdef" for ch in d):
                raise ConfigurationError(
                    "expected_digest must be a sha256 digest (or its first 12+ hex "
                    f"characters, as `ollama list` prints), got {self.expected_digest!r}"
                )
            self.expected_digest = d
        settings = self._router_settings()  # checked even when a shared router is used
        if self.router is not None and self.base_url is None:
            if self.backends is not None:
                raise ConfigurationError(
                    "pass either router= (to share a chat model's backends) or backends=, not both"
                )
            check_seconds("timeout", self.timeout, positive=True, optional=True)
            router = self.router
            configs = [b.config for b in router.backends]
            if self.client_kwargs:  # for this model's own clients; the probes are the router's
                configs = [with_client_kwargs(c, self.client_kwargs) for c in configs]
            owns = False
        else:  # base_url with router= is refused here, by name
            configs = self._resolve_backends(
                client_kwargs=self.client_kwargs, exclusive=("router",)
            )
            router = self._new_router(configs, settings)
            owns = True
        self._s = _State(configs, router, owns, DigestBook(self.expected_digest))
        return self

    # The batch call path (_plan, _start, _candidates, _failed, _succeeded, _recheck,
    # _read_tags/_aread_tags, _all_failed, _embed_batch/_aembed_batch) is
    # _embed_calls.EmbedCalls.

    # ------------------------------------------------------------------ public state
    @property
    def shared_router(self) -> Router:
        """The router in use (shared with a chat model when built with ``router=``)."""
        return self._s.router

    @property
    def backend_configs(self) -> list[BackendConfig]:
        """The backends in use, in configuration order (a shared router's own)."""
        return list(self._s.configs)

    @property
    def digest(self) -> str | None:
        """The build (sha256 digest) this instance embeds with: ``expected_digest`` until a
        server confirmed the full digest, then that; ``None`` before the first call."""
        return self._s.digests.digest

    @property
    def digests_used(self) -> dict[str, str]:
        """Backend -> digest of every backend that has embedded for this instance."""
        book = self._s.digests
        with book.lock:
            return dict(book.used)

    @property
    def mixed_digests(self) -> bool:
        """True once vectors of more than one build were returned (only possible with
        ``allow_digest_mismatch=True``)."""
        return len(set(self.digests_used.values())) > 1

    @property
    def last_batches(self) -> list[BatchRecord]:
        """Which backend served each batch of the most recent call (for inspection)."""
        return list(self._s.last_batches)

    def close(self) -> None:
        """Close the inner clients, and the router's probes when the router is our own.

        Usable afterwards (a later call builds again). Async clients are closed by their
        event loop when it shuts down; ``await emb.aclose()`` closes the running loop's."""
        s = self._s
        s.pool.close()
        if s.owns_router:
            s.router.close()

    async def aclose(self) -> None:
        """:meth:`close`, plus the async clients of the running event loop."""
        self.close()
        await self._s.pool.aclose()

    def _inner_params_changed(self) -> None:
        s = (self.__pydantic_private__ or {}).get("_s")
        if isinstance(s, _State):
            s.pool.invalidate()

    # ------------------------------------------------------------------ inner clients
    def _inner(self, name: str) -> OllamaEmbeddings:
        return self._s.pool.get(name, self._build_inner)

    def _ainner(self, name: str) -> OllamaEmbeddings:
        """The inner model for the running loop (``ollama.AsyncClient`` binds its pool to
        the loop of its first request), built inline on first use."""
        return self._s.pool.for_loop(name, self._build_inner)

    # ------------------------------------------------------------------ sync
    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed ``texts`` in batches, failing over per batch; order is preserved."""
        items, call = self._start(texts)
        if not items:
            return []
        out: list[list[float]] = []
        for start in range(0, len(items), self.batch_size):
            out.extend(self._embed_batch(call, start, items[start : start + self.batch_size]))
        self._s.last_batches = call.batches
        return out

    def embed_query(self, text: str) -> list[float]:
        if not isinstance(text, str):
            raise EmbeddingInputError(f"embed_query takes a str, got {type(text).__name__}")
        return self.embed_documents([text])[0]

    # ------------------------------------------------------------------ async
    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """The async twin of :meth:`embed_documents` (same decisions, same state)."""
        items, call = self._start(texts)
        if not items:
            return []
        out: list[list[float]] = []
        for start in range(0, len(items), self.batch_size):
            out.extend(
                await self._aembed_batch(call, start, items[start : start + self.batch_size])
            )
        self._s.last_batches = call.batches
        return out

    async def aembed_query(self, text: str) -> list[float]:
        if not isinstance(text, str):
            raise EmbeddingInputError(f"embed_query takes a str, got {type(text).__name__}")
        return (await self.aembed_documents([text]))[0]
