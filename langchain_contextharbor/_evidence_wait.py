"""The probe-evidence wait: a first-token deadline that holds only until a probe tells
whether a backend with no evidence yet is up (see :mod:`._transport`'s module doc, "Evidence
ends a doomed wait"). Made by the backend table, awaited by the transports.
"""

from __future__ import annotations

import concurrent.futures
import time

import httpx

from langchain_contextharbor._deadlines import CALL_DEADLINE

__all__ = ["EVIDENCE_MARGIN", "ProbeEvidenceTimeout", "ProbeWatch"]

EVIDENCE_MARGIN = 0.5
"""Seconds on top of the probe timeout that a :class:`ProbeWatch` waits for the verdict:
the probe's own timeout fires at the timeout, and the verdict must not race it."""


class ProbeWatch(float):
    """A first-token deadline that holds only until a probe tells whether the server is up.

    Its value is the seconds left, when it was made, until the probe in flight must have
    told (probe timeout + :data:`EVIDENCE_MARGIN` after the probe started). ``verdict``
    is that probe's health future: ``None`` (up) or the reason it is down. ``until`` is
    the same bound as a ``time.perf_counter()`` time. Made by
    :meth:`~langchain_contextharbor._table.BackendTable.first_token_deadline`, read by the
    transports below; a float, so everything else treats it as a deadline in seconds."""

    __slots__ = ("backend", "probe_timeout", "until", "verdict")

    backend: str
    probe_timeout: float
    until: float
    verdict: concurrent.futures.Future[str | None]

    @classmethod
    def make(
        cls,
        backend: str,
        verdict: concurrent.futures.Future[str | None],
        until: float,
        probe_timeout: float,
    ) -> ProbeWatch:
        w = cls(max(0.0, until - time.perf_counter()))
        w.backend, w.verdict, w.until, w.probe_timeout = backend, verdict, until, probe_timeout
        return w

    def describe(self) -> str:
        p = self.probe_timeout
        return (
            f"first-token deadline until the probe's verdict {p + EVIDENCE_MARGIN:g}s "
            f"(probe timeout {p:g}s + {EVIDENCE_MARGIN:g}s)"
        )

    def outcome(self, request: httpx.Request) -> None:
        """After the wait: return when the probe said "up"; else raise the attempt's end."""
        f = self.verdict
        if f.done():
            try:
                reason = f.result()
            except BaseException as exc:  # pragma: no cover - the prober sets results only
                reason = f"{type(exc).__name__}: {exc}"
            if reason is None:
                return
            raise ProbeEvidenceTimeout(
                f"ended by probe evidence before any answer: the probe of {self.backend} "
                f"found it down ({reason}); {self.describe()}",
                request=request,
            )
        raise ProbeEvidenceTimeout(
            f"{self.describe()} ran out: no verdict from the probe of {self.backend}",
            request=request,
        )


class ProbeEvidenceTimeout(httpx.ReadTimeout):
    """An attempt ended by probe evidence before its request was sent (see ProbeWatch)."""


def _watch_left(w: ProbeWatch) -> float:
    """Seconds to wait for a probe's verdict: until the watch's bound, within the call's."""
    left = w.until - time.perf_counter()
    deadline = CALL_DEADLINE.get()
    if deadline is not None:
        left = min(left, deadline - time.monotonic())
    return max(0.0, left)
