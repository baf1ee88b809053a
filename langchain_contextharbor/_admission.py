"""Admission: the one way a call (chat or embeddings) gets onto a backend.

Why one protocol: for one attempt a caller used to walk the router through a series of
separate calls (is a trial due, acquire with the spill-over candidates, the limits of the
attempt, record the outcome, release, join a trial as a last resort), and the embeddings
wrote that walk again, differently (no background trial, no spill-over, no abandonment).
Here it is written once, as in tenacity's ``for attempt in Retrying(...)``: the caller
iterates over admitted candidates, each a :class:`Lease` (a context manager) that knows its
limits, records success or failure, and releases its slot on exit (as *abandoned* when
neither was recorded: the caller stopped reading, or was cancelled)::

    for lease in admit(router, call, retries=..., replan=...):
        with lease:
            try:
                answer = send(lease.cfg, ...)
            except Exception as exc:
                lease.failed(verdict, text, fell_back=True)
                continue
            lease.succeeded(latency, ttft)
            return answer

What happens behind it, per candidate in plan order:

1. a candidate whose circuit is due for its trial (and that is not the last one) gets the
   router's own background trial; the call passes it over (:data:`ON_TRIAL`) and comes
   back to it, joining the trial, only when every other candidate failed;
2. the slot is acquired with the plan's later candidates as spill-over targets (fleet
   mode re-checks them on fresh fleet-wide counts); one passed over for a freer candidate
   is tried again after the others, so a call never fails for want of a slot;
3. a refusal (circuit opened meanwhile, or the fleet gave the trial or the last slot to
   another worker) is a skip record (:data:`NOT_ADMITTED`);
4. when nothing was admitted in a round, the iteration ends; after a round in which
   everything admitted failed, up to ``retries`` more rounds plan again.

The iterator writes the plan of each round and its skip records into the caller's
ledger (an object with ``plan``, ``skipped``, ``model``, ``num_ctx`` and ``pending``).

A success also settles the ledger's *pending* failures: error answers of other backends to
the same request whose breaker count waited for another server's answer (the rule is
:mod:`~langchain_contextharbor._failover`'s). And the first plan of a call that skips a
backend for an outage (down, circuit open or on trial) logs one WARNING per outage, not per
call (:func:`note_outages`): which backend, and why; the next plan that no longer skips
it for an outage ends that outage.
"""

from __future__ import annotations

import concurrent.futures
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from langchain_contextharbor.errors import SkipRecord

if TYPE_CHECKING:
    from langchain_contextharbor._facts import ProbeResult
    from langchain_contextharbor._router import Router
    from langchain_contextharbor.backends import BackendConfig
    from langchain_contextharbor.classify import Classification
    from langchain_contextharbor.routing import RoutePlan

__all__ = [
    "NOT_ADMITTED",
    "ON_TRIAL",
    "Lease",
    "Ledger",
    "admit",
    "admit_vetted",
    "note_outages",
]

logger = logging.getLogger("langchain_contextharbor")

ON_TRIAL = "on trial: a background request tests it; this call went on"
NOT_ADMITTED = (
    "not admitted at send time: circuit opened, or (fleet mode) the trial call or the "
    "last free slot went to another worker"
)


class Deferred(Protocol):
    """A failure whose breaker count waits for another backend's answer (the failover
    rule's ``Pending``; declared here, by the reader, to keep the modules acyclic)."""

    @property
    def backend(self) -> str: ...

    @property
    def verdict(self) -> Classification: ...

    @property
    def signature(self) -> tuple[int, str]: ...


class Ledger(Protocol):
    """What admission reads from and writes into the caller's record of one call."""

    plan: RoutePlan
    skipped: list[SkipRecord]
    model: str
    num_ctx: int
    pending: list[Deferred]


class Lease:
    """One admitted attempt on one backend: its slot, its limits, and its outcome.

    ``first_token``/``note``: a short first-token deadline when no model load is coming
    (else None) and why; ``queued``: the attempt starts behind other calls of this router
    on every slot (it will wait, so it teaches no speed). Leaving the ``with`` block
    releases the slot, counted as abandoned when neither :meth:`succeeded` nor
    :meth:`failed` was called."""

    __slots__ = (
        "cfg",
        "first_token",
        "ledger",
        "name",
        "note",
        "queued",
        "reasons",
        "router",
        "settled",
        "vetted",
    )

    def __init__(
        self,
        router: Router,
        cfg: BackendConfig,
        reasons: Sequence[str],
        ledger: Ledger,
        vetted: Any = None,
    ) -> None:
        self.router = router
        self.cfg = cfg
        self.name = name = cfg.name
        self.reasons = reasons
        self.ledger = ledger
        self.settled = False
        """Success or failure recorded; a lease released unsettled was abandoned."""
        self.vetted = vetted
        """What the caller's ``vet`` returned for this backend (:func:`admit_vetted`)."""
        self.first_token, self.note, self.queued = router.attempt_limits(name, ledger.model)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, typ: object, exc: object, tb: object) -> None:
        self.router.release(self.name, abandoned=not self.settled)

    def succeeded(
        self,
        latency: float,
        ttft: float | None,
        model: str | None = None,
        info: Mapping[str, Any] | None = None,
    ) -> None:
        """Record a success; ``model`` and ``info`` (Ollama's final chunk) teach speeds.
        Backends that answered this request with an error before are counted against now
        (this one served it: the request was not at fault)."""
        self.settled = True
        router = self.router
        router.record_success(self.name, latency, ttft, model=model, info=info, queued=self.queued)
        pending = self.ledger.pending
        if pending:
            for p in pending:
                router.count_failure(p.backend, p.verdict)
            pending.clear()

    def failed(
        self, verdict: Classification, text: str, *, fell_back: bool, interrupted: bool = False
    ) -> None:
        """Record a failure with its classification (feeds the breaker as it says)."""
        self.settled = True
        ledger = self.ledger
        self.router.record_failure(
            self.name,
            ledger.model,
            ledger.num_ctx,
            verdict,
            text,
            fell_back=fell_back,
            interrupted=interrupted,
        )


Vet = Callable[[str], Any]
"""A caller's own admission test, run before a backend's slot is taken: None passes the
backend over (the caller records why), anything else goes on the lease as ``vetted``."""


def _outage(reason: str) -> bool:
    return reason.startswith(("down", "circuit")) or reason == ON_TRIAL


def note_outages(router: Router, skipped: Sequence[SkipRecord], warned: dict[str, str]) -> None:
    """Log one WARNING per outage: a backend the plan skips for being down, its circuit open
    or on trial, the first time (``warned`` maps the backends of outages already logged to
    their reason); a backend no longer skipped for an outage is forgotten, so its next
    outage is logged again. Only called when there is something to say or to forget."""
    now = {s.backend: s for s in skipped if _outage(s.reason)}
    for name in list(warned):  # a copy: other threads' calls share the map
        if name not in now and warned.pop(name, None) is not None:
            logger.info("backend %s is no longer skipped: its outage is over", name)
    for name, s in now.items():
        if warned.setdefault(name, s.reason) is s.reason:
            logger.warning(
                "backend %s (%s) skipped: %s; calls go to the other backends until it is back",
                name,
                s.url,
                s.reason,
            )


def admit(
    router: Router,
    ledger: Ledger,
    *,
    spillover: bool = True,
    retries: int = 0,
    replan: Callable[[str, int], RoutePlan] | None = None,
    vet: Vet | None = None,
    stale: Callable[[str], bool] | None = None,
) -> Iterator[Lease]:
    """The admitted candidates of ``ledger.plan``, in order (see the module docstring);
    ``retries`` more rounds over a fresh ``replan(model, num_ctx)`` after everything
    admitted failed. ``vet`` and ``stale``: see :func:`admit_vetted` (which types what
    this generator then yields besides leases)."""
    model = ledger.model
    warned = router.outages_warned
    if warned or ledger.skipped:  # the hot path (nothing skipped, no outage): one test
        note_outages(router, ledger.skipped, warned)
    for round_ in range(retries + 1):
        if round_:
            assert replan is not None
            ledger.plan = replan(model, ledger.num_ctx)
            ledger.skipped = list(ledger.plan.skipped)
        tried = False
        plan = ledger.plan
        cands = plan.candidates
        names = plan.backend_names
        last = len(cands) - 1
        deferred: list[tuple[BackendConfig, Sequence[str], Any]] = []
        on_trial: list[tuple[BackendConfig, Sequence[str], Any]] = []
        for i, cand in enumerate(cands):
            cfg = router.get(cand.backend).config
            vetted: Any = None
            if vet is not None:
                if stale is not None and stale(cfg.name):
                    yield router.request_probe(cfg.name)  # type: ignore[misc]
                vetted = vet(cfg.name)
                if vetted is None:
                    continue
            if i < last and router.trial_in_background(cfg.name, model):
                ledger.skipped.append(SkipRecord(cfg.name, cfg.safe_url, ON_TRIAL))
                on_trial.append((cfg, cand.reasons, vetted))
                continue
            # Fleet mode re-checks the slot fleet-wide and may send the call on to a later
            # candidate that queues fewer calls per slot (spill-over on fresh counts); one
            # passed over this way is tried again last.
            spill = names[i + 1 :] if spillover else ()
            if not router.acquire(cfg.name, spill):
                if spill:
                    deferred.append((cfg, cand.reasons, vetted))
                else:
                    ledger.skipped.append(SkipRecord(cfg.name, cfg.safe_url, NOT_ADMITTED))
                continue
            tried = True
            yield Lease(router, cfg, cand.reasons, ledger, vetted)
        for cfg, reasons, vetted in deferred:
            if not router.acquire(cfg.name):
                ledger.skipped.append(SkipRecord(cfg.name, cfg.safe_url, NOT_ADMITTED))
                continue
            tried = True
            yield Lease(router, cfg, reasons, ledger, vetted)
        for cfg, reasons, vetted in on_trial:  # every other candidate failed: join the trial
            if router.acquire_joining_trial(cfg.name):
                tried = True
                yield Lease(router, cfg, reasons, ledger, vetted)
        if not tried:
            return


def admit_vetted(
    router: Router,
    ledger: Ledger,
    vet: Vet,
    *,
    stale: Callable[[str], bool] | None = None,
    spillover: bool = True,
) -> Iterator[Lease | concurrent.futures.Future[ProbeResult]]:
    """:func:`admit`, with ``vet`` deciding first on each candidate from its probe.

    A candidate for which ``stale`` says its probe must be read again is probed before it
    is vetted: the iterator yields that probe's future for the caller to wait on
    (``.result()``, or ``await asyncio.wrap_future(...)`` in a loop), so a sync and an
    async caller share every decision and only wait differently."""
    return admit(router, ledger, spillover=spillover, vet=vet, stale=stale)
