"""Digest safety for the embeddings: which build of the model an index is made with.

Why a module of its own: an embedding index is valid for one *build* of the model only, and
two servers can hold different builds under one name. Deciding that is book-keeping apart
from routing a batch: read the model's digest from a backend's probe (``/api/tags``) before
sending there, and again after a batch when that probe predates it (:func:`evidence_predates`:
a re-pull between probes), refuse a backend with another build (recorded as a skip), adopt
the first build used (or ``expected_digest``) and confirm it on every success, and say how
to repair a mismatch. :class:`DigestBook` keeps that state for one
:class:`~langchain_contextharbor.HybridOllamaEmbeddings` (under its own lock: concurrent
calls may pin at once); :class:`_Call` is one embed call's record, the failover record
shared with the chat model plus what an embed call keeps across its batches.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from langchain_contextharbor._facts import parse_digests
from langchain_contextharbor._failover import _Call as _CallRecord
from langchain_contextharbor.errors import EmbeddingDigestMismatchError, SkipRecord
from langchain_contextharbor.sizing import normalize_model_name

if TYPE_CHECKING:
    from langchain_contextharbor._facts import ProbeResult
    from langchain_contextharbor._router import Router
    from langchain_contextharbor.backends import BackendConfig

__all__ = [
    "BatchRecord",
    "DigestBook",
    "evidence_predates",
    "stale_probe",
    "strip_digest",
    "tags_digests",
]

logger = logging.getLogger("langchain_contextharbor")


@dataclass(frozen=True)
class BatchRecord:
    """Which backend embedded ``texts[start:end]`` of the last call, with which build."""

    start: int
    end: int
    backend: str
    digest: str
    fallback: bool
    """Whether another backend failed (or was refused) for this batch first."""


class _Call(_CallRecord):
    """Book-keeping of one embed call: the failover record shared with the chat model
    (attempts, skips, exceptions; its ``plan`` is the current batch's), plus what only
    an embed call keeps across its batches."""

    __slots__ = ("avoid", "batches", "mismatched")

    def __init__(self, model: str, num_ctx: int) -> None:
        _CallRecord.__init__(self, model, num_ctx)
        self.avoid: set[str] = set()
        """Backends that failed or were refused in this call: not tried again by later
        batches."""
        self.mismatched: dict[str, str] = {}
        self.batches: list[BatchRecord] = []


def strip_digest(value: str) -> str:
    return value.strip().lower().removeprefix("sha256:")


def stale_probe(router: Router, name: str) -> bool:
    """Whether ``name``'s digest must be read again before sending there: no probe yet,
    or one older than ``probe_ttl`` (a fresh failed probe is not retried: it refuses)."""
    p = router.get(name).probe
    return p is None or router.clock() - p.at > router.probe_ttl


def evidence_predates(router: Router, name: str, since: float) -> bool:
    """Whether ``name``'s last digest evidence (its probe) is no newer than ``since``, the
    clock time a batch was sent there: then the build the batch was vetted with may not be
    the one that embedded it (a re-pull in between), and ``/api/tags`` is read once more
    before the vectors are believed. A probe taken after the batch was sent is evidence
    enough (the only residue: a re-pull landing between that probe's read and the server
    computing the batch, well under one probe's latency).

    The cost, decided: at most one ``GET /api/tags`` per batch, and none when a probe has
    landed since the batch was sent. With probes every ``probe_ttl`` (10 s) and batches of
    milliseconds that is in practice one read per batch -- about a millisecond on a LAN
    beside a batch that costs tens to hundreds; the chat model's calls never pay it."""
    p = router.get(name).probe
    return p is None or p.at <= since


def tags_digests(tags: Any) -> dict[str, str]:
    """An ``ollama`` client's ``list()`` reply (``/api/tags``) as normalized name -> digest."""
    return parse_digests(
        {"model": getattr(m, "model", None), "digest": getattr(m, "digest", None)}
        for m in getattr(tags, "models", None) or ()
    )


class DigestBook:
    """The build one embeddings instance embeds with, and each backend's that did."""

    __slots__ = ("digest", "lock", "source", "used")

    def __init__(self, expected: str | None) -> None:
        self.lock = threading.Lock()
        self.digest: str | None = expected
        """``expected_digest`` (or a prefix of it) until a server confirmed the full one."""
        self.source = "expected_digest" if expected is not None else ""
        """Where :attr:`digest` came from, for the mismatch error."""
        self.used: dict[str, str] = {}
        """Backend -> digest of every backend that has embedded for this instance."""

    def vet(
        self, call: _Call, name: str, *, router: Router, model: str, allow_mismatch: bool
    ) -> str | None:
        """The digest to embed with on backend ``name``, or None (recorded as a skip) when
        refused: its probe failed or lists no digest for ``model``, or it holds another
        build than the one in use (unless ``allow_mismatch``)."""
        rt = router.get(name)
        cfg = rt.config
        p: ProbeResult | None = rt.probe
        key = normalize_model_name(model)
        reason: str | None = None
        digest: str | None = None
        if p is None or not p.ok:
            reason = f"could not read the model's digest: {p.reason if p else 'no probe'}"
        elif p.digests is None:
            reason = "its probe reported no digests"
        else:
            digest = p.digests.get(key)
            if digest is None:
                reason = f"model {key!r} not in this server's /api/tags"
        if digest is not None:
            digest = strip_digest(digest)
            with self.lock:
                expected = self.digest
            if expected is not None and not digest.startswith(expected) and not allow_mismatch:
                call.mismatched[name] = digest
                reason = f"holds build {digest[:12]}, not {expected[:12]} ({self.source})"
        if reason is not None:
            call.skipped.append(SkipRecord(cfg.name, cfg.safe_url, reason))
            call.avoid.add(name)
            return None
        return digest

    def recheck(
        self,
        call: _Call,
        name: str,
        vetted: str,
        read: dict[str, str] | BaseException,
        *,
        router: Router,
        model: str,
        allow_mismatch: bool,
    ) -> str | None:
        """After a batch returned from ``name``: the digest its vectors are from, by
        ``read`` (``/api/tags`` read after the reply, or the error reading it), or None
        when refused exactly as :meth:`vet` refuses (a skip; a changed build is a
        mismatch unless ``allow_mismatch``, then :meth:`pin` marks the mix). A changed
        build also asks for a probe, so later plans vet with it."""
        key = normalize_model_name(model)
        reason: str | None = None
        digest: str | None = None
        if isinstance(read, BaseException):
            reason = f"could not re-read the model's digest after the batch: {read!r}"
        elif (got := read.get(key)) is None:
            reason = f"model {key!r} no longer in this server's /api/tags"
        else:
            digest = strip_digest(got)
        if digest is not None and digest != vetted:
            router.request_probe(name)  # never waits: the table learns the new build
            logger.warning(
                "embedding model %s was re-pulled on %s during a batch: build %s, not %s",
                model,
                name,
                digest[:12],
                vetted[:12],
            )
            if not allow_mismatch:
                call.mismatched[name] = digest
                reason = f"re-pulled during the batch: holds build {digest[:12]}, not {vetted[:12]}"
        if reason is not None:
            cfg = router.get(name).config
            call.skipped.append(SkipRecord(cfg.name, cfg.safe_url, reason))
            call.avoid.add(name)
            return None
        return digest

    def pin(
        self,
        call: _Call,
        name: str,
        digest: str,
        *,
        model: str,
        allow_mismatch: bool,
        configs: Sequence[BackendConfig],
    ) -> None:
        """After a success on ``name``: adopt ``digest`` as the build in use, or confirm it."""
        with self.lock:
            current = self.digest
            if current is None:
                self.digest, self.source = digest, f"first used on {name!r}"
            elif digest.startswith(current):
                self.digest = digest  # an expected prefix becomes the full digest
            elif not allow_mismatch:
                # Two first calls raced to two servers holding different builds.
                call.mismatched[name] = digest
                raise self.mismatch(call, model, configs)
            else:
                logger.warning(
                    "embedding model %s: backend %s holds build %s, not %s; vectors of two "
                    "builds are being mixed (allow_digest_mismatch=True)",
                    model,
                    name,
                    digest[:12],
                    current[:12],
                )
            self.used[name] = digest

    def mismatch(
        self, call: _Call, model: str, configs: Sequence[BackendConfig]
    ) -> EmbeddingDigestMismatchError:
        """The error of a call refused for builds, with the commands that repair it."""
        pulls = "; ".join(f"OLLAMA_HOST={c.hostport} ollama pull {model}" for c in configs)
        hint = (
            f"pull the same build on every server ({pulls}) and check that "
            "`contextharbor models` shows one digest; or re-index every document with one "
            "build; or pass allow_digest_mismatch=True to accept mixed vectors"
        )
        return EmbeddingDigestMismatchError(
            model,
            self.digest or "",
            call.mismatched,
            source=self.source,
            hint=hint,
            attempts=call.attempts,
            skipped=[k for k in call.skipped if k.backend not in call.mismatched],
        )
