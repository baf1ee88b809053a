"""A raw-socket fuzz server: an Ollama that answers one path with a chosen broken reply.

Why raw sockets: the stand-in (:mod:`.server`) speaks correct HTTP and correct Ollama, and
its faults are the failures of a *working* server (hangs, cuts, error answers). What a
broken proxy, a crashed runner or a half-written reply sends is below that: bytes without a
newline, a line that never ends, a field of the wrong type, invalid UTF-8, ``NaN`` in a
vector. Each case here writes those bytes itself.

Every other request (probes, ``/api/show``, ``/api/tags`` ...) is relayed to an *upstream*
stand-in, so the router sees a healthy server whose chat or embed answers are broken, as
with a proxy in front of a crashed runner. Embedding cases fetch the upstream's real answer
and corrupt it (one ``NaN``, one vector short ...), so counts and dimensions are right
except where the case breaks them.

    with FuzzServer(gpu_standin.url, "endless_line") as fz:
        BackendConfig(name="gpu", base_url=fz.url, ...)

Endless cases run until the client goes away or :meth:`FuzzServer.stop` is called. Each
connection carries one request (``Connection: close``).
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

__all__ = ["CHAT_CASES", "EMBED_CASES", "FuzzServer"]

_NDJSON = "application/x-ndjson"
_JSON = "application/json"


def _line(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def _part(model: str, content: Any, done: bool = False, **extra: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "model": model,
        "created_at": "2025-01-01T00:00:00Z",
        "message": {"role": "assistant", "content": content},
        "done": done,
    }
    d.update(extra)
    return d


def _final(model: str, **timings: Any) -> bytes:
    t = {
        "done_reason": "stop",
        "total_duration": 2_000_000,
        "load_duration": 1_000,
        "prompt_eval_count": 3,
        "prompt_eval_duration": 1_000_000,
        "eval_count": 2,
        "eval_duration": 1_000_000,
    }
    t.update(timings)
    return _line(_part(model, "", True, **t))


Body = Iterator[bytes]
"""What a case sends after its head: pieces written as they come (sleeps inside)."""


class _Ctx:
    """What a case knows of the request (and, for embeddings, the upstream's answer)."""

    def __init__(self, body: dict[str, Any], upstream: Any, stop: threading.Event, gap: float):
        self.body, self.upstream, self.stop, self.gap = body, upstream, stop, gap
        self.model = str(body.get("model", "m"))


def _endless(ctx: _Ctx, piece: bytes, gap: float) -> Body:
    while not ctx.stop.is_set():
        yield piece
        if gap:
            time.sleep(gap)


def _trickle(ctx: _Ctx) -> Body:
    yield b'{"model":"' + ctx.model.encode() + b'","message":{"role":"assistant","content":"'
    yield from _endless(ctx, b"a", ctx.gap)


def _endless_line(ctx: _Ctx) -> Body:
    yield b'{"model":"' + ctx.model.encode() + b'","message":{"role":"assistant","content":"'
    yield from _endless(ctx, b"a" * 65536, 0.0)


def _empty_chunks(ctx: _Ctx) -> Body:
    yield from _endless(ctx, _line(_part(ctx.model, "")), ctx.gap)


def _chat(*lines: Callable[[str], bytes]) -> Callable[[_Ctx], Body]:
    def case(ctx: _Ctx) -> Body:
        for f in lines:
            yield f(ctx.model)

    return case


# Chat cases: name -> (status, content type, body). A body of b"" pieces is an empty body.
CHAT_CASES: dict[str, tuple[int, str, Callable[[_Ctx], Body]]] = {
    "trickle": (200, _NDJSON, _trickle),
    "endless_line": (200, _NDJSON, _endless_line),
    "empty_chunks": (200, _NDJSON, _empty_chunks),
    "content_number": (200, _NDJSON, _chat(lambda m: _line(_part(m, 42)), _final)),
    "message_null": (
        200,
        _NDJSON,
        _chat(lambda m: _line({"model": m, "message": None, "done": False}), _final),
    ),
    "message_list": (
        200,
        _NDJSON,
        _chat(lambda m: _line({"model": m, "message": ["x"], "done": False}), _final),
    ),
    "json_list": (200, _NDJSON, _chat(lambda m: b"[1,2,3]\n")),
    "json_string": (200, _NDJSON, _chat(lambda m: b'"hello"\n')),
    "json_null": (200, _NDJSON, _chat(lambda m: b"null\n")),
    "non_utf8": (200, _NDJSON, _chat(lambda m: b"\xff\xfe\xfa{\x80\n")),
    "non_utf8_content": (
        200,
        _NDJSON,
        _chat(lambda m: _line(_part(m, "x")).replace(b'"x"', b'"\xff\xfe"'), _final),
    ),
    "error_200": (200, _NDJSON, _chat(lambda m: b'{"error":"runner crashed"}\n')),
    "empty_200": (200, _NDJSON, _chat()),
    "eval_count_string": (
        200,
        _NDJSON,
        _chat(lambda m: _line(_part(m, "hi")), lambda m: _final(m, eval_count="many")),
    ),
    "tool_calls_wrong": (
        200,
        _NDJSON,
        _chat(
            lambda m: _line(
                {
                    "model": m,
                    "message": {"role": "assistant", "content": "", "tool_calls": "x"},
                    "done": False,
                }
            ),
            _final,
        ),
    ),
    "huge_timings": (
        200,
        _NDJSON,
        _chat(
            lambda m: _line(_part(m, "hi")),
            lambda m: _final(m, eval_count=10**9, eval_duration=1, load_duration=10**17),
        ),
    ),
}


def _vectors(ctx: _Ctx) -> list[list[float]]:
    return [list(v) for v in ctx.upstream["embeddings"]]


def _embed_with(change: Callable[[list[list[float]]], Any]) -> Callable[[_Ctx], Body]:
    def case(ctx: _Ctx) -> Body:
        reply = dict(ctx.upstream)
        reply["embeddings"] = change(_vectors(ctx))
        yield json.dumps(reply).encode()  # allow_nan: NaN / Infinity as Python writes them

    return case


def _set0(value: float) -> Callable[[list[list[float]]], Any]:
    def f(vs: list[list[float]]) -> Any:
        vs[0][0] = value
        return vs

    return f


def _embed_body(obj: Any) -> Callable[[_Ctx], Body]:
    def case(ctx: _Ctx) -> Body:
        yield json.dumps(obj).encode()

    return case


EMBED_CASES: dict[str, tuple[int, str, Callable[[_Ctx], Body]]] = {
    "nan": (200, _JSON, _embed_with(_set0(float("nan")))),
    "inf": (200, _JSON, _embed_with(_set0(float("inf")))),
    "short": (200, _JSON, _embed_with(lambda vs: [v[:-1] for v in vs])),
    "mixed": (200, _JSON, _embed_with(lambda vs: [vs[0][:-1], *vs[1:]])),
    "empty_vector": (200, _JSON, _embed_with(lambda vs: [[], *vs[1:]])),
    "count_mismatch": (200, _JSON, _embed_with(lambda vs: vs[:-1])),
    "strings": (200, _JSON, _embed_with(lambda vs: [["a"] * len(v) for v in vs])),
    "null_vectors": (200, _JSON, _embed_with(lambda vs: None)),
    "missing_vectors": (200, _JSON, _embed_body({"model": "m"})),
    "body_list": (200, _JSON, _embed_body([[0.1, 0.2]])),
    "error_200": (200, _JSON, _embed_body({"error": "runner crashed"})),
    "non_utf8": (200, _JSON, lambda ctx: iter([b'{"model":"\xff\xfe","embeddings":[[0.1]]}'])),
    "empty_200": (200, _JSON, lambda ctx: iter(())),
    "trickle": (200, _JSON, _trickle),
    "endless_line": (200, _JSON, _endless_line),
}


class FuzzServer:
    """A loopback TCP server that answers ``path`` with the broken reply ``case`` and relays
    everything else to ``upstream`` (a stand-in's URL). ``gap``: seconds between the pieces
    of a trickle or an endless stream of empty chunks. ``hits``: broken replies sent."""

    def __init__(
        self, upstream: str, case: str, *, path: str | None = None, gap: float = 0.4
    ) -> None:
        embed = path == "/api/embed" or (
            path is None and case in EMBED_CASES and case not in CHAT_CASES
        )
        self.path = path or ("/api/embed" if embed else "/api/chat")
        table = EMBED_CASES if self.path == "/api/embed" else CHAT_CASES
        if case not in table:
            raise ValueError(f"unknown fuzz case {case!r} for {self.path}: {sorted(table)}")
        self.case = case
        self._reply = table[case]
        self._up = urlsplit(upstream)
        self._gap = gap
        self._stop = threading.Event()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self.hits = 0
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._serve, name=f"fuzz-{case}", daemon=True)

    def start(self) -> FuzzServer:
        self._accept.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._accept.join(5)
        for t in self._threads:
            t.join(5)
        self._sock.close()

    def __enter__(self) -> FuzzServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ serving
    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            t = threading.Thread(target=self._handle, args=(conn,), daemon=True)
            self._threads = [x for x in self._threads if x.is_alive()]
            self._threads.append(t)
            t.start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(10)
            method, path, headers, body = _read_request(conn)
            if path.split("?", 1)[0] == self.path and method == "POST":
                self._broken(conn, body)
            else:
                status, rheaders, data = self._relay(method, path, headers, body)
                _send_plain(conn, status, rheaders, data)
        except OSError:  # the client went away: the end of every endless case
            pass
        finally:
            try:
                conn.close()
            except OSError:  # pragma: no cover
                pass

    def _relay(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        c = http.client.HTTPConnection(self._up.hostname or "127.0.0.1", self._up.port, timeout=30)
        try:
            fwd = {k: v for k, v in headers.items() if k.lower() not in ("host", "connection")}
            c.request(method, path, body=body or None, headers=fwd)
            r = c.getresponse()
            data = r.read()
            keep = [
                (k, v)
                for k, v in r.getheaders()
                if k.lower() not in ("transfer-encoding", "content-length", "connection")
            ]
            return r.status, keep, data
        finally:
            c.close()

    def _broken(self, conn: socket.socket, raw: bytes) -> None:
        self.hits += 1
        try:
            req = json.loads(raw or b"{}")
        except ValueError:
            req = {}
        upstream: Any = None
        if self.path == "/api/embed":
            status, _, data = self._relay("POST", self.path, {"Content-Type": _JSON}, raw)
            upstream = json.loads(data) if status == 200 else {"embeddings": []}
        status, ctype, make = self._reply
        ctx = _Ctx(req if isinstance(req, dict) else {}, upstream, self._stop, self._gap)
        head = (
            f"HTTP/1.1 {status} OK\r\nContent-Type: {ctype}\r\n"
            "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )
        conn.sendall(head.encode())
        for piece in make(ctx):
            if piece:
                conn.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        conn.sendall(b"0\r\n\r\n")


def _read_request(conn: socket.socket) -> tuple[str, str, dict[str, str], bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        got = conn.recv(65536)
        if not got:
            raise ConnectionResetError("client closed before its request")
        buf += got
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for ln in lines[1:]:
        k, _, v = ln.partition(":")
        headers[k.strip()] = v.strip()
    n = int(next((v for k, v in headers.items() if k.lower() == "content-length"), "0"))
    while len(rest) < n:
        got = conn.recv(65536)
        if not got:
            break
        rest += got
    return method, path, headers, rest[:n]


def _send_plain(
    conn: socket.socket, status: int, headers: list[tuple[str, str]], data: bytes
) -> None:
    head = [f"HTTP/1.1 {status} {http.client.responses.get(status, '')}"]
    head += [f"{k}: {v}" for k, v in headers]
    head += [f"Content-Length: {len(data)}", "Connection: close", "", ""]
    conn.sendall("\r\n".join(head).encode("latin-1") + data)
