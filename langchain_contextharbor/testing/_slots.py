"""One stand-in's generation slots: ``num_parallel`` at once, ``max_queue`` waiting, then 503.

Why an object: the count of requests generating and waiting, and the condition they wait
on, are one piece of state; the chat endpoint holds a slot through :meth:`Slots.hold`, the
server reads the counts and wakes waiters on ``stop()``, and neither touches the other's
fields.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

from langchain_contextharbor.testing._values import StandInConfig
from langchain_contextharbor.testing._wire import _POLL, _Aborted, _RequestError
from langchain_contextharbor.testing.faults import BUSY_MESSAGE

__all__ = ["Slots"]


class Slots:
    """``active`` requests generate; ``waiting`` ones queue for a slot.

    ``config`` is the stand-in's own, read at each request (``num_parallel``, ``max_queue``).
    Read ``active`` and ``waiting`` holding ``lock`` to see them consistent with each other
    (and with anything else that changes only while a slot is taken or given back).
    """

    def __init__(self, config: StandInConfig) -> None:
        self._config = config
        self.lock = threading.Condition()
        self.active = 0
        self.waiting = 0

    @contextlib.contextmanager
    def hold(self, abandoned: Callable[[], bool]) -> Iterator[None]:
        """One slot for the body; 503 (Ollama's busy error) when the queue is full, and
        :class:`_Aborted` when ``abandoned()`` turns true while waiting (server stopping,
        client gone: Ollama drops such a request from its queue)."""
        cfg = self._config
        with self.lock:
            if self.active >= max(1, cfg.num_parallel):
                if self.waiting >= cfg.max_queue:
                    raise _RequestError(503, BUSY_MESSAGE)
                self.waiting += 1
                try:
                    while self.active >= max(1, cfg.num_parallel):
                        if abandoned():
                            raise _Aborted
                        self.lock.wait(_POLL)
                finally:
                    self.waiting -= 1
            self.active += 1
        try:
            yield
        finally:
            with self.lock:
                self.active -= 1
                self.lock.notify()

    def wake_all(self) -> None:
        """Wake every waiter now so it rechecks ``abandoned()`` (the server is stopping)."""
        with self.lock:
            self.lock.notify_all()
