"""One request/response on a connection: framing (JSON, chunked NDJSON) and fault timing.

Why apart from the endpoints: *when* a fault acts is a property of the wire (before the
headers, after them, after K chunks, instead of the done line), the same for every endpoint;
the endpoints only say what to send, and this object decides whether a pending fault turns
that into a hang, a cut, an error line or a malformed one.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from typing import Any

from langchain_contextharbor.testing._requests import early_errors_as_json
from langchain_contextharbor.testing._values import RequestRecord, StandInConfig
from langchain_contextharbor.testing._wire import _POLL, _Aborted, _dumps, _Handler
from langchain_contextharbor.testing.faults import (
    MALFORMED_LINE,
    MID_STREAM_ERROR_MESSAGE,
    Fault,
    FaultRule,
)


class _Exchange:
    """One request/response on a connection: body parsing, fault hooks and framing.

    ``config`` is the stand-in's (its ``hang_cap``); ``stop_event`` is set when the server
    stops, ``release`` when ``clear_faults()`` lets hung requests resume: the two events of
    the server's current run, handed over so that this object needs nothing else from it.
    """

    def __init__(
        self,
        handler: _Handler,
        record: RequestRecord,
        config: StandInConfig,
        stop_event: threading.Event,
        release: threading.Event,
    ) -> None:
        self.h = handler
        self.record = record
        self.config = config
        self.rule: FaultRule | None = None
        self.headers_sent = False
        self.chunks = 0
        self.finished = False
        self.stop_event = stop_event
        self.release = release

    # -- fault bookkeeping --------------------------------------------------------
    def take_rule(self, *faults: Fault) -> FaultRule | None:
        """Hand out the pending rule once, if it is one of ``faults`` (any when empty)."""
        rule = self.rule
        if rule is None or (faults and rule.fault not in faults):
            return None
        self.rule = None
        return rule

    def client_gone(self) -> bool:
        """Whether the client closed its end (Ollama cancels such a request, freeing its slot)."""
        sock = self.h.connection
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def _wait(self, event: threading.Event, seconds: float) -> bool:
        """Wait for ``event`` up to ``seconds``; abort when the client disconnects meanwhile."""
        deadline = time.monotonic() + seconds
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return event.is_set()
            if event.wait(min(_POLL, remaining)):
                return True
            if self.client_gone():
                raise _Aborted

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` unless the server stops or the client leaves first (then abort)."""
        if seconds <= 0:
            return
        if seconds < _POLL:
            if self.stop_event.wait(seconds):
                raise _Aborted
            return
        if self._wait(self.stop_event, seconds):
            raise _Aborted

    def hang(self, rule: FaultRule) -> None:
        """Block until ``clear_faults()`` (resume), ``stop()``, client exit or the cap (abort)."""
        limit = rule.delay if rule.delay is not None else self.config.hang_cap
        released = self._wait(self.release, limit)
        if self.stop_event.is_set():
            raise _Aborted
        if not released and rule.delay is None:
            raise _Aborted

    def abort(self) -> None:
        """Drop the connection at once, without finishing the response."""
        self.h.close_connection = True
        with contextlib.suppress(OSError):
            self.h.connection.shutdown(socket.SHUT_RDWR)
        raise _Aborted

    # -- plain responses -----------------------------------------------------------
    def _headers(self, status: int, content_type: str | None, length: int | None) -> None:
        self.record.status = status
        self.h.send_response(status)
        if content_type is not None:
            self.h.send_header("Content-Type", content_type)
        if length is None:
            self.h.send_header("Transfer-Encoding", "chunked")
        else:
            self.h.send_header("Content-Length", str(length))
        self.h.end_headers()
        self.h.wfile.flush()
        self.headers_sent = True

    def send(self, status: int, content_type: str, body: bytes) -> None:
        """Send a complete response, letting a pending stream-type fault act on it."""
        rule = self.take_rule()
        head = self.h.command == "HEAD"
        if rule is not None:
            self.record.fault = rule.fault
            f = rule.fault
            if f in (Fault.HANG_BEFORE_FIRST_CHUNK, Fault.HANG_MID_STREAM, Fault.ACCEPT_HANG):
                self.hang(rule)
            elif f is Fault.SLOW_FIRST_TOKEN:
                self.sleep(rule.delay if rule.delay is not None else 1.0)
            elif f is Fault.HANG_AFTER_HEADERS:
                self._headers(status, content_type, len(body))
                self.hang(rule)
                if not head:
                    self.h.wfile.write(body)
                return
            elif f is Fault.CUT_MID_STREAM:
                self._headers(status, content_type, len(body))
                if not head:
                    self.h.wfile.write(body[: len(body) // 2])
                self.abort()
            elif f is Fault.MALFORMED_LINE:
                body = (rule.message or MALFORMED_LINE).encode() + b"\n"
            elif f is Fault.ERROR_MID_STREAM:
                status, content_type = 500, "application/json; charset=utf-8"
                body = _dumps({"error": rule.message or MID_STREAM_ERROR_MESSAGE})
        self._headers(status, content_type, len(body))
        if not head:
            self.h.wfile.write(body)

    def send_json(self, status: int, obj: Any) -> None:
        """``application/json; charset=utf-8`` response."""
        self.send(status, "application/json; charset=utf-8", _dumps(obj))

    def send_error(self, status: int, message: str) -> None:
        """Ollama's ``{"error": message}`` response."""
        self.send_json(status, {"error": message})

    def send_status(self, status: int) -> None:
        """A bare status, no body and no ``Content-Type`` (gin's ``AbortWithStatus``: the
        403 of the host and origin checks). No fault acts on it."""
        self._headers(status, None, 0)

    def stream_error(self, status: int, message: str) -> None:
        """End a stream with an error, framed as the advertised version does.

        After a chunk: one ``{"error": ...}`` line and a clean end, the status stays 200.
        Before any chunk: ``status`` with a JSON body from 0.12.6, a 200 and the line in
        0.12.0-0.12.5 (:func:`~._requests.early_errors_as_json`). No fault acts on it.
        """
        if self.finished:
            return
        body = _dumps({"error": message})
        if not self.headers_sent and early_errors_as_json(self.config.version):
            # streamResponse: c.Header("Content-Type", "application/json"); c.JSON(status, ...)
            self._headers(status, "application/json", len(body))
            if self.h.command != "HEAD":
                self.h.wfile.write(body)
            self.finished = True
            return
        self._ensure_stream_headers()
        self._write_chunk(body + b"\n")
        self.end_stream()

    # -- NDJSON streaming ----------------------------------------------------------
    def _write_chunk(self, data: bytes) -> None:
        self.h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _ensure_stream_headers(self) -> None:
        if not self.headers_sent:
            self._headers(200, "application/x-ndjson", None)

    def _stream_fault(self, final: bool) -> bool:
        """Apply a pending stream fault at this chunk boundary; False = stream is over."""
        rule = self.rule
        if rule is None:
            return True
        f = rule.fault
        at_start = self.chunks == 0
        due = final or self.chunks >= rule.after_chunks
        if f in (Fault.HANG_BEFORE_FIRST_CHUNK, Fault.HANG_AFTER_HEADERS):
            due = at_start
        if not due:
            return True
        self.rule = None
        self.record.fault = f
        if f is Fault.SLOW_FIRST_TOKEN:
            self.sleep(rule.delay if rule.delay is not None else 1.0)
            return True
        if f is Fault.HANG_BEFORE_FIRST_CHUNK:
            self.hang(rule)
            return True
        if f is Fault.HANG_AFTER_HEADERS:
            self._ensure_stream_headers()
            self.hang(rule)
            return True
        if f is Fault.HANG_MID_STREAM:
            if not at_start:
                self._ensure_stream_headers()
            self.hang(rule)
            return True
        self.sleep(rule.delay or 0.0)
        if f is Fault.ERROR_MID_STREAM:
            # before the first chunk the advertised version decides: 500 JSON or a 200 line
            self.stream_error(rule.status or 500, rule.message or MID_STREAM_ERROR_MESSAGE)
            return False
        self._ensure_stream_headers()
        if f is Fault.CUT_MID_STREAM:
            self.abort()
        line = (rule.message or MALFORMED_LINE).encode() + b"\n"  # MALFORMED_LINE
        self._write_chunk(line)
        self.end_stream()
        return False

    def emit(self, obj: dict[str, Any], *, final: bool = False) -> bool:
        """Write one NDJSON line; False when a fault ended the stream instead."""
        if self.finished:
            return False
        if not self._stream_fault(final):
            return False
        self._ensure_stream_headers()
        self._write_chunk(_dumps(obj) + b"\n")
        self.chunks += 1
        return True

    def end_stream(self) -> None:
        """Terminating zero-length chunk: a clean end of the response body."""
        if not self.finished:
            self._ensure_stream_headers()
            self.h.wfile.write(b"0\r\n\r\n")
            self.finished = True
