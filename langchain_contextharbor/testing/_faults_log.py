"""The stand-in's fault-injection API and request log, as a mixin of ``OllamaStandIn``.

Apart from :mod:`.server` so the server class stays about lifecycle, models and dispatch;
what a test arms and reads back (``inject``, ``clear_faults``, ``faults``, ``requests``,
``requests_to``, ``clear_log``) and how an armed rule becomes an error reply live here.
The state is the server's (created in its ``__init__``); this module never imports it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from types import EllipsisType
from typing import TYPE_CHECKING, Any

from langchain_contextharbor.testing._requests import _GIB
from langchain_contextharbor.testing._values import RequestRecord, StandInConfig
from langchain_contextharbor.testing.faults import (
    BUSY_MESSAGE,
    MODEL_RUNNER_CRASH_MESSAGE,
    Fault,
    FaultRule,
    FaultTable,
    normalize_paths,
    oom_message,
)
from langchain_contextharbor.testing.models import StandInModel


class _FaultsAndLog:
    """Fault injection and the request log of an :class:`~.server.OllamaStandIn`."""

    config: StandInConfig
    _lock: threading.RLock
    _release: threading.Event
    _refusing: bool
    _faults: FaultTable
    _log: deque[RequestRecord]
    _log_lock: threading.Lock

    if TYPE_CHECKING:

        @property
        def name(self) -> str: ...

        def start(self) -> Any: ...

        def stop(self, timeout: float = 5.0) -> None: ...

        def get_model(self, name: str) -> StandInModel | None: ...

    def inject(
        self,
        fault: Fault | str,
        *,
        count: int | None = None,
        after_chunks: int = 0,
        delay: float | None = None,
        paths: Sequence[str] | str | EllipsisType | None = ...,
        status: int | None = None,
        message: str | None = None,
    ) -> FaultRule:
        """Make the next ``count`` matching requests (all, if ``None``) fail with ``fault``.

        ``after_chunks``: K for mid-stream faults. ``delay``: stall of ``SLOW_FIRST_TOKEN``
        (default 1 s), wait before an error response or a mid-stream fault, or a finite hang
        length (hangs then resume). ``paths``: which paths match (default ``("/api/chat",)``,
        everything for ``REFUSE``/``ACCEPT_HANG``; ``None`` = every path). ``status`` /
        ``message`` override the HTTP status (``HTTP_ERROR``) and the error text.
        ``REFUSE`` closes the listener until ``clear_faults()`` and ignores the other options.
        """
        f = Fault(fault)
        if f is Fault.REFUSE:
            if count is not None:
                raise ValueError("Fault.REFUSE cannot be counted: it closes the port")
            rule = FaultRule(f, None, paths=None)
            self.stop()
            self._refusing = True
            return rule
        rule = FaultRule(
            fault=f,
            remaining=count,
            after_chunks=max(0, after_chunks),
            delay=delay,
            paths=normalize_paths(
                f,
                None if isinstance(paths, EllipsisType) else paths,
                given=not isinstance(paths, EllipsisType),
            ),
            status=status,
            message=message,
        )
        return self._faults.add(rule)

    def clear_faults(self) -> None:
        """Drop every rule, release hung handlers (they resume) and undo ``REFUSE``."""
        self._faults.clear()
        with self._lock:
            old, self._release = self._release, threading.Event()
        old.set()
        if self._refusing:
            self.start()

    @property
    def faults(self) -> list[FaultRule]:
        """Rules that can still match."""
        return self._faults.active()

    @property
    def requests(self) -> list[RequestRecord]:
        """Snapshot of the request log (oldest first)."""
        with self._log_lock:
            return list(self._log)

    def requests_to(self, path: str) -> list[RequestRecord]:
        """The logged requests for one path, e.g. ``srv.requests_to("/api/chat")``."""
        return [r for r in self.requests if r.path == path]

    def clear_log(self) -> None:
        """Forget the request log."""
        with self._log_lock:
            self._log.clear()

    def _record(self, method: str, path: str, body: Any) -> RequestRecord:
        rec = RequestRecord(method, path, body, time.time(), self.name)
        with self._log_lock:
            self._log.append(rec)
        return rec

    def _fault_error(self, rule: FaultRule, path: str, body: Any) -> tuple[int, str]:
        model = ""
        if isinstance(body, dict):
            model = str(body.get("model") or body.get("name") or "")
        f = rule.fault
        if f is Fault.BUSY:
            return rule.status or 503, rule.message or BUSY_MESSAGE
        if f is Fault.MODEL_NOT_FOUND:
            if rule.message:
                return rule.status or 404, rule.message
            if path in ("/api/embed", "/api/embeddings"):
                return rule.status or 404, f'model "{model}" not found, try pulling it first'
            return rule.status or 404, f"model '{model}' not found"
        if f is Fault.OOM:
            spec = self.get_model(model) if model else None
            need = spec.loaded_size(self.config.num_ctx) if spec else 8 * _GIB
            have = self.config.available_memory or need // 3
            return rule.status or 500, rule.message or oom_message(need, have)
        return rule.status or 500, rule.message or MODEL_RUNNER_CRASH_MESSAGE
