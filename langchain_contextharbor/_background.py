"""The router's own requests: background trial calls and speed calibration.

Why a part of its own: these are chat requests the router sends for itself, not for a
user, on the prober's threads and clients (:class:`~langchain_contextharbor._prober.Prober`),
and their outcomes feed the table (breakers, learned speeds, 404 marks). Planning and
admission only start them.

Why httpx and not the ``ollama`` client: both requests need a timeout of their own per
request (the call's first-token deadline, which differs per backend and model), while an
``ollama.Client`` fixes its timeout when built and opens its own connection pool; the
prober's client already carries the backend's headers, TLS context and transport. So the
trial is one plain ``POST /api/chat`` and the calibration streams through
:func:`final_chunk`, the package's one small NDJSON reader, bounded in chunks.

Fleet mode: :meth:`Background.sync_speeds` exchanges learned speeds with the fleet every
``speed_sync_s`` seconds, off the hot path, so a new worker starts with what others learned.
"""

from __future__ import annotations

import concurrent.futures
import functools
import json
import logging
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import httpx

from langchain_contextharbor._facts import learn_speed
from langchain_contextharbor._prober import Prober
from langchain_contextharbor._table import BackendRuntime, BackendTable
from langchain_contextharbor.fleet import SharedBreaker
from langchain_contextharbor.sizing import DEFAULT_NUM_CTX

__all__ = ["CALIBRATION_PROMPT", "CALIBRATION_TOKENS", "Background", "final_chunk"]

logger = logging.getLogger("langchain_contextharbor")

CALIBRATION_TOKENS = 16
"""Tokens a speed calibration asks for (``num_predict``): enough for a generation speed."""
CALIBRATION_PROMPT = "Count from one to twenty in words, separated by commas."
"""A fixed, short prompt whose answer is longer than :data:`CALIBRATION_TOKENS`."""
MAX_CHUNKS = 4 * CALIBRATION_TOKENS + 64
"""Chunks :func:`final_chunk` reads before giving up (a server that never says done)."""


class _Missing(Exception):
    """A calibration request got a 404: the model is not on that server."""


def final_chunk(lines: Iterator[str], limit: int = MAX_CHUNKS) -> Mapping[str, Any]:
    """The final chunk (``"done": true``) of an Ollama NDJSON chat stream, read from
    ``lines``; ValueError or RuntimeError (the server's ``error``) otherwise. Reads at most
    ``limit`` chunks."""
    n = 0
    for line in lines:
        if not line.strip():
            continue
        n += 1
        if n > limit:
            raise ValueError(f"no final chunk within {limit} chunks")
        chunk = json.loads(line)
        if not isinstance(chunk, dict):
            raise ValueError("malformed chat chunk")
        if chunk.get("error"):
            raise RuntimeError(str(chunk["error"])[:200])
        if chunk.get("done"):
            return chunk
    raise ValueError("the answer ended without a final chunk")


class Background:
    """Trial calls and speed calibrations of one router's table."""

    def __init__(self, table: BackendTable, prober: Prober) -> None:
        self._t = table
        self._prober = prober
        self.trial_futures: dict[str, concurrent.futures.Future[bool]] = {}
        """backend name -> its background trial call (see :meth:`trial_in_background`)."""
        self.calibration_futures: dict[str, concurrent.futures.Future[bool]] = {}
        """backend name -> its speed calibration request (see :meth:`calibrate`)."""
        self._calibrated_at: dict[tuple[str, str], float] = {}
        """(backend, normalized model) -> clock time its last calibration started."""
        self.speed_sync_s = 5.0
        """Fleet mode: how often learned speeds are exchanged with the fleet (seconds)."""
        self.next_speed_sync = float("-inf")

    # ------------------------------------------------------------------ trials
    def trial_in_background(self, name: str, model: str) -> bool:
        """See :meth:`langchain_contextharbor._router.Router.trial_in_background`."""
        t = self._t
        b = t._by_name[name]
        br = b.breaker
        if br.state == "closed" or not t.background_trials:
            return False
        now = t.clock()
        with t._lock:
            fut = self.trial_futures.get(name)
            if fut is not None and not fut.done():
                return True
            if not br.would_allow(now):
                return False  # still cooling down: the plan skips it anyway
            before = br.state
            if not br.acquire(now):
                return True
            if br.state != before:
                t._version += 1
            key = t.key(model)
        if t._shared is not None and t._shared.acquire(name, now, trial=True) is False:
            with t._lock:
                br.release()  # another worker holds the fleet's trial
                t._version += 1
            return True
        self.trial_futures[name] = self._prober.pool().submit(self._run_trial, b, key)
        logger.info("trial call of %s runs in the background", name)
        return True

    def _run_trial(self, b: BackendRuntime, key: str) -> bool:
        """One-token chat on ``b`` with the call's first-token deadline; feeds the breaker."""
        t = self._t
        name = b.config.name
        deadline, _ = self._t.first_token_deadline(name, key)
        to = b.config.timeouts
        first = deadline if deadline is not None else to.first_token
        ok = False
        missing = False
        try:
            r = self._prober.http(b).post(
                "/api/chat",
                json={
                    "model": key,
                    "messages": [{"role": "user", "content": "hi"}],
                    "stream": False,
                    "options": {"num_predict": 1},
                },
                timeout=httpx.Timeout(first, connect=to.connect),
            )
            # The server answered: 2xx, or a 4xx about the request (404: model not there).
            ok = r.status_code < 500
            missing = r.status_code == 404
        except Exception as exc:
            logger.info("background trial of %s failed: %s", name, b.config.scrub(str(exc)))
        now = t.clock()
        with t._lock:
            t._version += 1
            if ok:
                b.breaker.record_success()
                b.answered_at = now
                if missing:
                    b.missing[key] = now + t.missing_ttl
            else:
                b.breaker.record_failure(now)
            br = b.breaker
            shared = SharedBreaker(br.state, br.failures, br.opened_at, br.cooldown)
        if t._shared is not None:
            t._shared.release(name, now)
            t._shared.publish_breaker(name, shared, now)
        logger.info("background trial of %s: %s", name, "ok" if ok else "failed")
        return ok

    # ------------------------------------------------------------------ calibration
    def calibrate(
        self, names: Iterable[str], model: str, num_ctx: int | None, answer_tokens: float
    ) -> list[str]:
        """Measure the speed of ``model`` on each backend of ``names`` that has no measure
        yet, with one small chat request in the background; returns where one started.

        Why: before any measurement, plans order backends by the speed prior (a GPU ten
        times faster than a CPU). When the prior keeps calls off a backend, no real call
        ever measures it, so the prior would decide for ever, and two servers that are in
        fact alike would never share a burst. The planner names such backends
        (``RoutePlan.unmeasured``); a request of :data:`CALIBRATION_TOKENS` tokens there
        returns Ollama's timings, which feed the same learned averages as real calls (the
        short answer's length teaches nothing), and the plans are re-made.

        Bounded: once per (backend, model) per ``calibration_cooldown`` seconds, at most one
        in flight per backend, only where the circuit is closed, the last probe succeeded
        and a slot is free (``max_parallel``, fleet-wide in fleet mode). The request holds
        that slot: it counts in flight, so plans see it. Its outcome never moves the breaker
        and never counts as a user call. ``answer_tokens``: the answer length to assume
        while no real answer of the model was seen (the prior's)."""
        t = self._t
        if not t.calibrate_speeds:
            return []
        key = t.key(model)
        now = t.clock()
        started: list[str] = []
        with t._lock:
            for name in names:
                b = t._by_name.get(name)
                if b is None or (name, key) in t.speeds:
                    continue
                at = self._calibrated_at.get((name, key))
                if at is not None and now - at < t.calibration_cooldown:
                    continue
                fut = self.calibration_futures.get(name)
                if fut is not None and not fut.done():
                    continue
                p = b.probe
                if b.breaker.state != "closed" or p is None or not p.ok:
                    continue
                if b.load >= b.config.max_parallel:
                    continue
                if len(self._calibrated_at) >= 1024:  # bounded, whatever models callers name
                    self._calibrated_at.pop(next(iter(self._calibrated_at)))
                self._calibrated_at[(name, key)] = now
                b.in_flight += 1  # the slot it holds: released when the request ends
                b.calibrations += 1
                t._version += 1
                fut = self._prober.pool().submit(
                    self._run_calibration, b, key, num_ctx, answer_tokens
                )
                # Cancelled before it ran (close()): nothing else would free its slot.
                fut.add_done_callback(functools.partial(self._calibration_cancelled, b))
                self.calibration_futures[name] = fut
                started.append(name)
        for name in started:
            logger.info("speed of %s on %s unmeasured: calibrating in the background", key, name)
        return started

    def _calibration_cancelled(
        self, b: BackendRuntime, fut: concurrent.futures.Future[bool]
    ) -> None:
        if fut.cancelled():
            self._end_calibration(b)

    def _end_calibration(self, b: BackendRuntime, *, fleet: bool = False) -> None:
        t = self._t
        with t._lock:
            b.in_flight -= 1
            t._version += 1
        if fleet and t._shared is not None:
            t._shared.release(b.config.name, t.clock())

    def _run_calibration(
        self, b: BackendRuntime, key: str, num_ctx: int | None, answer_tokens: float
    ) -> bool:
        """The calibration request (see :meth:`calibrate`); True when a speed was learned."""
        t = self._t
        name = b.config.name
        sh = t._shared
        counted = False
        learned = False
        try:
            if sh is not None:
                self.sync_speeds()  # another worker may have measured it already
                if (name, key) in t.speeds:
                    return False
                counted = sh.acquire(name, t.clock(), trial=False) is not None
            info = self._calibration_request(b, key, num_ctx)
            now = t.clock()
            with t._lock:
                b.answered_at = now
                b.warm[key] = now
                old = t.speeds.get((name, key))
                known = t.answer_tokens.get(key) or (old.output_tokens if old else None)
                new = learn_speed(old, info, answer_tokens=known or answer_tokens)
                if new is not None and new is not old:
                    t.speeds[(name, key)] = new
                    learned = True
                else:
                    b.calibration_failures += 1
            if learned:
                logger.info(
                    "calibrated %s on %s: %.1f tokens/s, first token %.3fs",
                    key,
                    name,
                    new.tokens_per_s if new else 0.0,
                    new.first_token_s if new else 0.0,
                )
            else:
                logger.info("calibration of %s on %s: no timings in the answer", key, name)
        except Exception as exc:
            # A failed calibration is no evidence against the server: user calls and probes
            # judge its health; this only leaves the speed unmeasured until the cooldown.
            with t._lock:
                b.calibration_failures += 1
                if isinstance(exc, _Missing):
                    b.missing[key] = t.clock() + t.missing_ttl
            logger.info(
                "calibration of %s on %s failed: %s",
                key,
                name,
                b.config.scrub(f"{type(exc).__name__}: {exc}")[:200],
            )
        finally:
            self._end_calibration(b, fleet=counted)
        return learned

    def _calibration_request(
        self, b: BackendRuntime, key: str, num_ctx: int | None
    ) -> Mapping[str, Any]:
        """Stream a short chat from ``b`` and return its final chunk (Ollama's timings)."""
        to = b.config.timeouts
        deadline, _ = self._t.first_token_deadline(b.config.name, key)
        first = deadline if deadline is not None else to.first_token
        options: dict[str, Any] = {"num_predict": CALIBRATION_TOKENS}
        if num_ctx is not None and num_ctx != DEFAULT_NUM_CTX:
            options["num_ctx"] = num_ctx  # as the calls send it: no reload for a new context
        body = {
            "model": key,
            "messages": [{"role": "user", "content": CALIBRATION_PROMPT}],
            "stream": True,
            "options": options,
        }
        # Per read: the first chunk may wait for a load; later ones come a token apart.
        timeout = httpx.Timeout(first, connect=to.connect)
        with self._prober.http(b).stream("POST", "/api/chat", json=body, timeout=timeout) as r:
            if r.status_code == 404:
                raise _Missing(f"model {key!r} not found (404)")
            r.raise_for_status()
            return final_chunk(r.iter_lines())

    # ------------------------------------------------------------------ fleet speeds
    def sync_speeds(self) -> int:
        """See :meth:`langchain_contextharbor._router.Router.sync_speeds`."""
        t = self._t
        sh = t._shared
        if sh is None:
            return 0
        with t._lock:
            mine = dict(t.speeds)
        fleet = sh.sync_speeds(mine, t.clock())
        if not fleet:
            return 0
        taken = 0
        with t._lock:
            for k, sp in fleet.items():
                if k[0] in t._by_name and k not in t.speeds:
                    t.speeds[k] = sp
                    taken += 1
            if taken:
                t._version += 1
        return taken

    def maybe_sync_speeds(self, now: float) -> None:
        """Schedule :meth:`sync_speeds` when ``speed_sync_s`` has passed (fleet mode)."""
        if now >= self.next_speed_sync:
            self.next_speed_sync = now + self.speed_sync_s
            self._prober.submit_background(self.sync_speeds)
