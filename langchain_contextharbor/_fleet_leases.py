"""This worker's leases and trials in the Redis fleet store: taken, renewed, released.

Why a module of its own: a lease is the one piece of fleet state a worker *owns*, and owning
it is a lifecycle with two threads of its own -- the renewer that keeps the leases and the
trial alive while the worker is, and the sender that takes releases off the caller's path --
plus the releases that could not be sent (the store down, a round trip that failed, an
acquire whose reply never came), kept and sent once the store answers again. The facade
:class:`~langchain_contextharbor._fleet_redis.RedisSharedState` delegates its ``acquire``
and ``release`` here; the keys, scripts and connection are
:mod:`~langchain_contextharbor._fleet_wire`'s.

Locking: the held members, the trials, the unsent releases and the two thread handles are
guarded by one lock, never held across a round trip.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable, Mapping, Sequence

import redis

from langchain_contextharbor._fleet_wire import (
    FleetKeys,
    RedisLink,
    acquire_costs,
    trial_key_ms,
)

__all__ = ["FleetLeases"]

_Release = tuple[str, str, str | None, float]
"""(backend, member, trial member held or None, router time of the release)."""


class FleetLeases:
    """The calls this worker has in flight in the fleet, and the trials it holds."""

    def __init__(
        self,
        link: RedisLink,
        keys: FleetKeys,
        *,
        worker: str,
        fleet_clock: Callable[[], float],
        lease_ttl: float,
        trial_ttl: float,
        max_parallel: Mapping[str, int],
        async_release: bool,
    ) -> None:
        self._link = link
        self._keys = keys
        self.worker = worker
        self.fleet_clock = fleet_clock
        self.lease_ttl = lease_ttl
        self.trial_ttl = trial_ttl
        self.async_release = async_release
        self._seq = itertools.count()
        self._caps = [max_parallel.get(b, 1 << 30) for b in keys.of]
        self._outbox: queue.SimpleQueue[_Release | None] = queue.SimpleQueue()
        self._sender: threading.Thread | None = None
        self._held: dict[str, list[str]] = {b: [] for b in keys.of}
        self._trials: dict[str, str] = {}
        self._unsent: list[tuple[str, str, str | None]] = []
        """Releases (backend, member, trial member) not sent yet: the store was down, or the
        round trip failed (also acquires whose reply never came). Sent on recovery."""
        self._lock = threading.Lock()
        self._renewer: threading.Thread | None = None
        self._stop = threading.Event()

    def trial_of(self, backend: str) -> str | None:
        """The member holding this worker's trial on ``backend``, if it holds one."""
        return self._trials.get(backend)

    def unsent_count(self) -> int:
        return len(self._unsent)

    # ------------------------------------------------------------------ acquire / release
    def acquire(
        self,
        backend: str,
        now: float,
        *,
        trial: bool,
        spill_to: Sequence[str] = (),
        costs: Mapping[str, tuple[float, float]] | None = None,
    ) -> bool | None:
        keys = self._keys.of.get(backend)
        link = self._link
        if keys is None or not link.ok(now):
            return None
        fnow = self.fleet_clock()
        member = f"{self.worker}:{next(self._seq)}"
        index = self._keys.index
        alts = ",".join(str(index[a]) for a in spill_to if a in index and a != backend)
        try:
            reply = link.acquire(
                keys=[keys["trial"], self._keys.ver, *self._keys.leases],
                args=[
                    repr(fnow),
                    repr(fnow + self.lease_ttl),
                    member,
                    "1" if trial else "0",
                    repr(fnow + self.trial_ttl),
                    index[backend],
                    alts,
                    *self._caps,
                    *acquire_costs(self._keys.of, self._caps, costs),
                    trial_key_ms(self.trial_ttl),
                ],
            )
        except (redis.RedisError, OSError) as exc:
            # No reply, but the script may still run (a paused Redis runs what it was sent
            # when it resumes): release what it would hold, once the store answers again.
            self._keep_unsent([(backend, member, member if trial else None)])
            link.failed(exc, now)
            return None
        link.remember(reply, now)
        n = reply[0]
        link.recovered(now)
        if int(n) < 0:
            return False
        with self._lock:
            self._held[backend].append(member)
            if trial:
                self._trials[backend] = member
        self._ensure_renewer()
        return True

    def release(self, backend: str, now: float) -> None:
        if backend not in self._keys.of:
            return
        with self._lock:
            held = self._held[backend]
            member = held.pop() if held else None
            trial = self._trials.pop(backend, None)
        if member is None:
            return
        if not self._link.ok(now):  # the store is down: sent when it is back
            self._keep_unsent([(backend, member, trial)])
            return
        self._link.forget_one(self._keys.index[backend] - 1)
        if self.async_release:
            self._outbox.put((backend, member, trial, now))
            self._ensure_sender()
        else:
            self._send_releases([(backend, member, trial, now)])

    def _send_releases(self, batch: list[_Release]) -> None:
        """One round trip for every release in ``batch`` (the sender thread's work)."""
        link = self._link
        now = batch[-1][3]
        fnow = repr(self.fleet_clock())
        try:
            if len(batch) == 1:  # the common case: no pipeline (it would check the script)
                backend, member, trial, _ = batch[0]
                keys = self._keys.of[backend]
                reply = link.release(
                    keys=[keys["lease"], keys["trial"], self._keys.ver, *self._keys.leases],
                    args=[fnow, member, trial or ""],
                )
            else:
                pipe = link.r.pipeline(transaction=False)
                for backend, member, trial, _ in batch:
                    keys = self._keys.of[backend]
                    link.release(
                        keys=[keys["lease"], keys["trial"], self._keys.ver, *self._keys.leases],
                        args=[fnow, member, trial or ""],
                        client=pipe,
                    )
                reply = pipe.execute()[-1]
        except (redis.RedisError, OSError) as exc:
            self._keep_unsent([(b, m, t) for b, m, t, _ in batch])
            link.failed(exc, now)
            return
        link.remember(reply, now)

    # ------------------------------------------------------------------ releases not sent
    def _keep_unsent(self, items: Sequence[tuple[str, str, str | None]]) -> None:
        """Keep releases that did not reach the store, to send on recovery (bounded: a
        very long outage loses the oldest, which their expiry then ends)."""
        with self._lock:
            self._unsent.extend(items)
            del self._unsent[:-10_000]

    def send_unsent(self, now: float) -> None:
        """Send the releases kept during an outage (releasing twice is harmless)."""
        with self._lock:
            items, self._unsent = self._unsent, []
        if not items:
            return
        batch = [(b, m, t, now) for b, m, t in items]
        if self.async_release:
            for item in batch:
                self._outbox.put(item)
            self._ensure_sender()
        else:
            self._send_releases(batch)

    # ------------------------------------------------------------------ the sender
    def _ensure_sender(self) -> None:
        if self._sender is None or not self._sender.is_alive():
            with self._lock:
                if self._sender is None or not self._sender.is_alive():
                    t = threading.Thread(
                        target=self._send_loop, name="contextharbor-fleet-release", daemon=True
                    )
                    self._sender = t
                    t.start()

    def _send_loop(self) -> None:
        while True:
            item = self._outbox.get()
            if item is None:
                return
            batch = [item]
            while True:
                try:
                    nxt = self._outbox.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._send_releases(batch)
                    return
                batch.append(nxt)
            self._send_releases(batch)

    def flush(self, timeout: float = 2.0) -> None:
        """Send the releases still queued and wait for them (close() does it too)."""
        sender = self._sender
        if sender is not None and sender.is_alive():
            self._outbox.put(None)
            sender.join(timeout)
        self._sender = None

    def close(self) -> None:
        """Send queued releases (and, once more, those kept from an outage), stop renewing.
        Usable afterwards: the next acquire starts the threads again."""
        self.flush()
        with self._lock:
            unsent, self._unsent = self._unsent, []
        if unsent:
            self._send_releases([(b, m, t, float("-inf")) for b, m, t in unsent])
        self._stop.set()
        self._stop = threading.Event()
        self._renewer = None

    # ------------------------------------------------------------------ the renewer
    def _ensure_renewer(self) -> None:
        if self._renewer is None or not self._renewer.is_alive():
            with self._lock:
                if self._renewer is None or not self._renewer.is_alive():
                    t = threading.Thread(
                        target=self._renew_loop, name="contextharbor-fleet-leases", daemon=True
                    )
                    self._renewer = t
                    t.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(min(self.lease_ttl, self.trial_ttl) / 3):
            self.renew_leases()

    def renew_leases(self) -> int:
        """Push the expiry of every lease this worker holds ``lease_ttl`` ahead, and of every
        trial it holds ``trial_ttl`` ahead (the background thread does it every third of the
        shorter); returns how many leases."""
        with self._lock:
            held = {b: list(ms) for b, ms in self._held.items() if ms}
            trials = dict(self._trials)
        if not held and not trials:
            return 0
        fnow = self.fleet_clock()
        expiry = fnow + self.lease_ttl
        try:
            pipe = self._link.r.pipeline(transaction=False)
            for b, members in held.items():
                pipe.zadd(self._keys.of[b]["lease"], dict.fromkeys(members, expiry), xx=True)
            for b, member in trials.items():
                self._link.renew_trial(
                    keys=[self._keys.of[b]["trial"]],
                    args=[member, repr(fnow + self.trial_ttl), trial_key_ms(self.trial_ttl)],
                    client=pipe,
                )
            pipe.execute()
        except (redis.RedisError, OSError):
            return 0
        return sum(len(m) for m in held.values())
