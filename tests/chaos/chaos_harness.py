"""A seeded chaos run of HybridChatOllama against two stand-ins in their own processes.

Why: unit and fault tests show one failure at a time; users meet them mixed, concurrent and
overlapping (a server killed while streams run, the other one answering 503, then both down).
This harness drives a mix of invoke / stream / ainvoke / astream / batch / tool calls /
structured output, sync and async and concurrently, while a schedule (a pure function of the
seed) injects the stand-ins' faults, kills and restarts their processes, blackholes one (a
loopback listener whose accept backlog is full, so a connect never completes), puts a server
that is not Ollama on one's port (Python's ``http.server``: HTML 404s and 501s), takes both
down, and sends a request with an invalid option (it must raise the request's error and
leave routing as it was for the valid calls after it). Every call is checked against
invariants (``Checker``), and the run as a whole against the router's ``stats()`` and the
process's threads and file descriptors after ``close()``.

The harness checks itself: ``INJECTED_BUGS`` patch three realistic bugs into the model (a raw
transport error leaking, an in-flight slot never released, a stream spliced across backends);
the suite asserts the checker reports each of them.

Used by ``tests/chaos/test_chaos.py`` (short run in ``make test``) and ``benchmarks/chaos.py``
(the long run whose counts go into docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import http.server
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_ollama import ChatOllama, OllamaEmbeddings
from pydantic import BaseModel

from langchain_contextharbor import (
    BackendConfig,
    HybridChatOllama,
    HybridOllamaEmbeddings,
    Timeouts,
)
from langchain_contextharbor._router import Router
from langchain_contextharbor.errors import (
    AllBackendsFailedError,
    ConfigurationError,
    ContextHarborError,
    DeadlineExceededError,
    InvalidRequestError,
    StreamInterruptedError,
)
from langchain_contextharbor.testing import OllamaStandIn, StandInModel
from langchain_contextharbor.testing.clock import FakeClock

MODEL = "llama3.2:1b"
EMBED = "nomic-embed-text"
EMBED_DIGEST = "c3" * 32  # the same build on both servers (standin_child.py)
NAMES = ("gpu", "cpu")
CHILD = Path(__file__).with_name("standin_child.py")

#: Short client deadlines so every hang resolves in about a second (long enough that a
#: healthy call on a loaded 2-core machine never trips them), and a total deadline per call:
#: longer than one attempt can take (1.9 s), shorter than two.
TIMEOUTS = Timeouts(connect=0.3, first_token=1.0, idle=0.6, probe=0.3, total=3.0)
#: Hung stand-in handlers give up after this (they are released at phase end anyway).
HANG_CAP = 2.0
#: Added to every call's budget for a loaded 2-core machine (scheduling, GC, imports).
SLACK_S = 1.5


class Answer(BaseModel):
    """The structured-output schema of the mix."""

    answer: str
    confidence: int


def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return f"sunny in {city}"


# ---------------------------------------------------------------------------- servers
class StandInProcess:
    """A stand-in in a child process: faults over stdin, SIGKILL, restart on the same port."""

    def __init__(
        self,
        name: str,
        gpu_fraction: float,
        token_delay: float,
        num_parallel: int = 64,
        cpu: int | None = None,
    ) -> None:
        """``cpu``: pin the server process to that core (benchmarks keep client and servers
        on different cores so scheduling noise does not swamp small differences)."""
        self.name = name
        self.num_parallel = num_parallel
        self.cpu = cpu
        self.gpu_fraction = gpu_fraction
        self.token_delay = token_delay
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        args = [str(self.port), str(self.gpu_fraction), str(HANG_CAP), str(self.token_delay)]
        args.append(str(self.num_parallel))
        cpu = self.cpu
        pin = None
        if cpu is not None and hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > cpu:

            def pin() -> None:
                os.sched_setaffinity(0, {cpu})

        proc = subprocess.Popen(
            [sys.executable, str(CHILD), self.name, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            preexec_fn=pin,
        )
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("listening "):
            proc.kill()
            proc.wait()
            raise RuntimeError(f"stand-in {self.name} did not start: {line!r}")
        self.port = int(line.split()[1])
        self.proc = proc

    def command(self, **cmd: Any) -> None:
        with self._lock:
            proc = self.proc
            if proc is None or proc.stdin is None or proc.stdout is None:
                return
            proc.stdin.write(json.dumps(cmd) + "\n")
            proc.stdin.flush()
            reply = proc.stdout.readline().strip()
        if reply != "ok":
            raise RuntimeError(f"stand-in {self.name}: {cmd} -> {reply!r}")

    def kill(self) -> None:
        """SIGKILL: open connections reset, the port refuses until ``start()``."""
        with self._lock:
            proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.kill()
        proc.wait()
        for f in (proc.stdin, proc.stdout):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()

    def stop(self) -> None:
        self.kill()


class Blackhole:
    """A loopback listener on ``port`` that never accepts, its backlog already full: a
    client's TCP connect is neither accepted nor refused (the SYN is dropped)."""

    def __init__(self, port: int) -> None:
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        deadline = time.monotonic() + 5.0
        while True:
            try:
                self.listener.bind(("127.0.0.1", port))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        self.listener.listen(0)
        self.fillers: list[socket.socket] = []
        for _ in range(8):  # fill the accept queue until a connect stalls
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(0.1)
            try:
                s.connect(("127.0.0.1", port))
            except OSError:
                s.close()
                break
            self.fillers.append(s)

    def close(self) -> None:
        for s in [*self.fillers, self.listener]:
            s.close()


class _QuietFiles(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class ForeignServer:
    """Python's ``http.server`` over an empty folder on ``port`` (what ``python -m
    http.server`` gives, as ``testing.foreign.plain_http_server`` does on a free port): HTML
    404 for ``/api/version`` and ``/api/tags``, HTML 501 for every ``POST``. Not Ollama."""

    def __init__(self, port: int) -> None:
        self.root = tempfile.TemporaryDirectory()
        handler = functools.partial(_QuietFiles, directory=self.root.name)
        deadline = time.monotonic() + 5.0
        while True:
            try:
                self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, name="chaos-foreign", daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(2.0)
        self.root.cleanup()


#: The invalid option of a ``bad_request`` phase: Ollama refuses it (500, ``option "num_ctx"
#: must be of type integer``) on every server alike.
BAD_OPTIONS = {"num_ctx": "big"}


# ---------------------------------------------------------------------------- oracle
class Oracle:
    """What each backend answers directly (plain ChatOllama, fault-free in-process
    stand-ins with the same names and models): the scripted engine is deterministic."""

    def __init__(self) -> None:
        self.servers = {
            n: OllamaStandIn(
                name=n,
                models=[MODEL, StandInModel(EMBED, digest=EMBED_DIGEST)],
                loaded=[MODEL],
                num_parallel=8,
            ).start()
            for n in NAMES
        }
        self.models = {n: ChatOllama(model=MODEL, base_url=s.url) for n, s in self.servers.items()}
        self.embedders = {
            n: OllamaEmbeddings(model=EMBED, base_url=s.url) for n, s in self.servers.items()
        }
        self._cache: dict[tuple[str, str, str], Any] = {}
        self._lock = threading.Lock()

    def expected(self, kind: str, backend: str, prompt: str) -> Any:
        key = (kind, backend, prompt)
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        m = self.models[backend]
        value: Any
        if kind == "text":
            value = m.invoke(prompt).content
        elif kind == "tools":
            value = _tool_calls(m.bind_tools([get_weather]).invoke(prompt))
        elif kind == "structured":
            out = m.with_structured_output(Answer, method="json_schema").invoke(prompt)
            value = out.model_dump() if isinstance(out, BaseModel) else out
        elif kind == "embed":
            value = self.embedders[backend].embed_documents(embed_texts(prompt))
        else:
            raise ValueError(kind)
        with self._lock:
            self._cache[key] = value
        return value

    def close(self) -> None:
        for s in self.servers.values():
            s.stop()


def embed_texts(prompt: str) -> list[str]:
    """The documents one embed call of the mix sends."""
    return [f"{prompt} doc {k}" for k in range(3)]


def _tool_calls(msg: BaseMessage) -> list[tuple[str, Any]]:
    calls = getattr(msg, "tool_calls", None) or []
    return [(c["name"], c["args"]) for c in calls]


# ---------------------------------------------------------------------------- schedule
FAULTS: list[tuple[str, dict[str, Any]]] = [
    ("refuse", {}),
    ("accept_hang", {}),
    ("hang_before_first_chunk", {}),
    ("hang_after_headers", {}),
    ("hang_mid_stream", {"after_chunks": 2}),
    ("cut_mid_stream", {"after_chunks": 2}),
    ("error_mid_stream", {"after_chunks": 0}),
    ("error_mid_stream", {"after_chunks": 3}),
    ("malformed_line", {"after_chunks": 0}),
    ("malformed_line", {"after_chunks": 2}),
    ("oom", {}),
    ("busy", {}),
    ("model_not_found", {}),
]
OPS = (
    "invoke",
    "stream",
    "ainvoke",
    "astream",
    "batch",
    "abatch",
    "tools",
    "atools",
    "structured",
    "astructured",
    "embed",
    "aembed",
    "stream_abandon",
    "astream_abandon",
)
ASYNC_OPS = frozenset(op for op in OPS if op.startswith("a"))


@dataclass
class Phase:
    """One step of the schedule: what is done to the servers while ``ops`` run."""

    index: int
    action: str  # healthy | fault | kill | blackhole | foreign | both_down | bad_request
    target: str = ""  # gpu | cpu | both
    fault: str = ""
    fault_kw: dict[str, Any] = field(default_factory=dict)
    count: int | None = None
    kill_after_s: float = 0.0
    ops: list[tuple[str, str]] = field(default_factory=list)  # (op, prompt)

    def describe(self) -> str:
        if self.action == "fault":
            return f"{self.target}: {self.fault} {self.fault_kw or ''} x{self.count or 'all'}"
        if self.action == "kill":
            return f"{self.target}: SIGKILL after {self.kill_after_s:.2f}s"
        return f"{self.target}: {self.action}" if self.target else self.action


def make_schedule(seed: int, phases: int, calls_per_phase: int) -> list[Phase]:
    """The whole run as a pure function of ``seed``: the same seed gives the same faults,
    in the same order, with the same calls (timing still interleaves them differently)."""
    rng = random.Random(seed)
    out: list[Phase] = []
    cycle = [
        "fault",
        "fault",
        "fault",
        "kill",
        "blackhole",
        "foreign",
        "both_down",
        "bad_request",
        "healthy",
    ]
    # The first phases cover every fault and every server action once; then seeded picks.
    opening = ["healthy"]
    for k in range(len(FAULTS)):
        opening.append("fault")
        if k % 4 == 3:
            opening.append(("kill", "blackhole", "both_down", "healthy")[k // 4 % 4])
    opening += ["foreign", "bad_request", "healthy"]
    faults_left = list(FAULTS)
    for i in range(phases):
        action = opening[i] if i < len(opening) else rng.choice(cycle)
        ph = Phase(i, action)
        if action == "fault":
            name, kw = faults_left.pop(0) if faults_left else rng.choice(FAULTS)
            ph.fault, ph.fault_kw = name, dict(kw)
            ph.target = rng.choice(["gpu", "gpu", "cpu", "both"])
            ph.count = None if name == "refuse" else rng.choice([None, 1, 2, 3])
        elif action == "kill":
            ph.target = rng.choice(["gpu", "cpu"])
            ph.kill_after_s = rng.uniform(0.0, 0.15)
        elif action in ("blackhole", "foreign"):
            ph.target = rng.choice(["gpu", "cpu"])
        elif action == "both_down":
            ph.target = "both"
        for _ in range(calls_per_phase):
            ph.ops.append((rng.choice(OPS), f"chaos {seed}-{i}-{rng.randrange(10**6)}"))
        out.append(ph)
    return out


# ---------------------------------------------------------------------------- records
@dataclass
class Outcome:
    """What one logical call (one batch item counts as one) produced."""

    phase: int
    op: str
    prompt: str
    elapsed: float
    kind: str = "text"
    backend: str | None = None
    value: Any = None  # text, tool calls or structured dict
    backends_seen: tuple[str, ...] = ()
    attempts_before: int = 0
    error: BaseException | None = None
    partial: str = ""
    abandoned: bool = False
    """The caller stopped reading after the first chunk (and closed the stream)."""


@dataclass
class Report:
    """Counts and violations of one run."""

    seed: int
    calls: int = 0
    ok: int = 0
    abandoned: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    ops: Counter[str] = field(default_factory=Counter)
    served: Counter[str] = field(default_factory=Counter)
    fallbacks: int = 0
    bad_requests: int = 0
    """Calls with an invalid option (``bad_request`` phases), each refused as the request's."""
    actions: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    max_over_budget_ratio: float = 0.0
    wall_s: float = 0.0
    stats: dict[str, Any] = field(default_factory=dict)
    abandoned_counted: bool = False
    threads: tuple[int, int] = (0, 0)
    fds: tuple[int, int] = (0, 0)
    fds_after_close: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "calls": self.calls,
            "ok": self.ok,
            "abandoned_by_caller": self.abandoned,
            "typed_errors": dict(self.errors),
            "ops": dict(self.ops),
            "served": dict(self.served),
            "answers_after_failover": self.fallbacks,
            "bad_requests_refused": self.bad_requests,
            "schedule_actions": dict(self.actions),
            "violations": list(self.violations),
            "max_elapsed_over_budget": round(self.max_over_budget_ratio, 3),
            "wall_s": round(self.wall_s, 1),
            "abandoned_counted_by_stats": self.abandoned_counted,
            "threads_before_after_close": list(self.threads),
            "fds_before_and_after_close_and_drop": list(self.fds),
            "fds_after_close_model_still_referenced": self.fds_after_close,
        }


# ---------------------------------------------------------------------------- checker
class Checker:
    """The per-call invariants, and the run-level ones over ``stats()``."""

    def __init__(self, oracle: Oracle, budget_s: float) -> None:
        self.oracle = oracle
        self.budget_s = budget_s
        self.violations: list[str] = []
        self.expected_successes = 0
        self.expected_failures = 0
        self.expected_abandoned = 0
        self.deadline_errors = 0
        """Calls that ended in DeadlineExceededError: each recorded one or two failed
        attempts (the one the deadline cut, maybe one before it), which it does not list."""
        self._lock = threading.Lock()

    def _bad(self, o: Outcome, what: str) -> None:
        with self._lock:
            self.violations.append(f"phase {o.phase} {o.op} {o.prompt!r}: {what}")

    def check(self, o: Outcome, *, healthy: bool) -> None:
        if o.elapsed > self.budget_s:
            self._bad(o, f"took {o.elapsed:.2f}s, over the {self.budget_s:.2f}s budget")
        if o.error is not None:
            self._check_error(o, healthy)
            return
        if o.abandoned:
            with self._lock:
                self.expected_abandoned += 1
                self.expected_failures += o.attempts_before
            if o.backend not in NAMES or len(set(o.backends_seen)) != 1:
                self._bad(o, f"abandoned stream from backends {o.backends_seen}")
                return
            want = self.oracle.expected("text", o.backend, o.prompt)
            if not o.partial or not want.startswith(o.partial):
                self._bad(o, f"first chunk {o.partial!r} is not a prefix of {want!r}")
            return
        if o.kind != "embed":  # the embedder has its own router and stats
            with self._lock:
                self.expected_successes += 1
                self.expected_failures += o.attempts_before
        if o.backend not in NAMES:
            self._bad(o, f"answer without a serving backend in its metadata: {o.backend!r}")
            return
        if len(set(o.backends_seen)) > 1:
            self._bad(o, f"chunks from several backends: {o.backends_seen}")
        want = self.oracle.expected(o.kind, o.backend, o.prompt)
        if o.value != want:
            self._bad(o, f"answer {o.value!r} is not {o.backend}'s own answer {want!r}")

    def _check_error(self, o: Outcome, healthy: bool) -> None:
        exc = o.error
        assert exc is not None
        if not isinstance(exc, ContextHarborError) or isinstance(exc, ConfigurationError):
            self._bad(o, f"undocumented error {type(exc).__module__}.{type(exc).__name__}: {exc}")
            return
        if healthy:
            self._bad(o, f"failed while both servers were healthy: {type(exc).__name__}: {exc}")
        if isinstance(exc, StreamInterruptedError):
            if o.op not in ("stream", "astream", "stream_abandon", "astream_abandon"):
                self._bad(o, "StreamInterruptedError from a call that does not stream")
            with self._lock:
                self.expected_failures += o.attempts_before + 1
            if o.backend is None or len(set(o.backends_seen)) > 1:
                self._bad(o, f"interrupted stream from backends {o.backends_seen}")
                return
            if exc.backend != o.backend:
                self._bad(o, f"interrupted by {exc.backend!r}, served by {o.backend!r}")
            want = self.oracle.expected("text", o.backend, o.prompt)
            if not want.startswith(o.partial):
                self._bad(o, f"partial text {o.partial!r} is not a prefix of {want!r}")
            return
        if isinstance(exc, DeadlineExceededError):
            if o.kind != "embed":
                with self._lock:
                    self.deadline_errors += 1
            if o.partial and (o.backend not in NAMES or len(set(o.backends_seen)) > 1):
                self._bad(o, f"deadline hit on a stream from backends {o.backends_seen}")
            elif o.partial:
                want = self.oracle.expected("text", str(o.backend), o.prompt)
                if not want.startswith(o.partial):
                    self._bad(o, f"partial text {o.partial!r} is not a prefix of {want!r}")
            return
        if isinstance(exc, AllBackendsFailedError):
            if o.kind != "embed":
                with self._lock:
                    self.expected_failures += len(exc.attempts)
            if o.partial:
                self._bad(o, f"text {o.partial!r} delivered before AllBackendsFailedError")
            return
        self._bad(o, f"unexpected typed error {type(exc).__name__}: {exc}")

    def check_bad_request(self, o: Outcome, before: dict[str, str], after: dict[str, str]) -> None:
        """A call with an invalid option: the request's error (InvalidRequestError, a
        ValueError; RequestRejectedError when both servers refused it), no text, and every
        circuit as it was before it."""
        exc = o.error
        if not isinstance(exc, InvalidRequestError):
            what = "no error" if exc is None else f"{type(exc).__name__}: {exc}"
            self._bad(o, f"invalid option {BAD_OPTIONS} raised {what}, not the request's error")
        else:
            with self._lock:  # refused by the servers: each attempt is counted (no verdict)
                self.expected_failures += len(getattr(exc, "attempts", ()))
        if o.partial:
            self._bad(o, f"text {o.partial!r} delivered for an invalid request")
        if after != before:
            self._bad(o, f"an invalid request changed the circuits: {before} -> {after}")

    def check_embedder_stats(self, stats: dict[str, Any]) -> None:
        """The embedder's own router: balanced and nothing left in flight."""
        for name, s in stats.items():
            if s["in_flight"] != 0:
                self.violations.append(f"embedder stats: {name} in_flight {s['in_flight']}")
            own = s["successes"] + sum(s["failures"].values()) + s.get("abandoned", 0)
            if s["requests"] != own:
                self.violations.append(
                    f"embedder stats: {name} requests {s['requests']} != successes + failures"
                    f" = {own}"
                )

    def check_stats(self, stats: dict[str, Any], report: Report) -> None:
        report.stats = stats
        req = sum(s["requests"] for s in stats.values())
        ok = sum(s["successes"] for s in stats.values())
        failed = sum(sum(s["failures"].values()) for s in stats.values())
        abandoned = sum(s.get("abandoned", 0) for s in stats.values())
        report.abandoned_counted = all("abandoned" in s for s in stats.values())
        for name, s in stats.items():
            if s["in_flight"] != 0:
                self.violations.append(f"stats: {name} in_flight {s['in_flight']} after the run")
            own = s["successes"] + sum(s["failures"].values()) + s.get("abandoned", 0)
            if report.abandoned_counted and s["requests"] != own:
                self.violations.append(
                    f"stats: {name} requests {s['requests']} != successes + failures"
                    f"{' + abandoned' if report.abandoned_counted else ''} = {own}"
                )
        if ok != self.expected_successes:
            self.violations.append(
                f"stats: {ok} successes counted, {self.expected_successes} answers delivered"
            )
        low = self.expected_failures + self.deadline_errors
        high = self.expected_failures + len(NAMES) * self.deadline_errors
        if not low <= failed <= high:
            seen = f"{self.expected_failures} failed attempts seen"
            if self.deadline_errors:
                seen += f" + 1 to {len(NAMES)} for each of {self.deadline_errors} deadline errors"
            self.violations.append(f"stats: {failed} failures counted, {seen}")
        if report.abandoned_counted:
            if abandoned != self.expected_abandoned:
                self.violations.append(
                    f"stats: {abandoned} abandoned counted, {self.expected_abandoned} seen"
                )
            if req != ok + failed + abandoned:
                self.violations.append(f"stats: {req} requests != {ok} + {failed} + {abandoned}")
        elif req != ok + failed + self.expected_abandoned:
            # No abandoned counter yet: the requests it leaves uncounted must be exactly
            # the streams this run abandoned.
            self.violations.append(
                f"stats: {req} requests != {ok} successes + {failed} failures + "
                f"{self.expected_abandoned} streams abandoned by the caller"
            )


# ---------------------------------------------------------------------------- calls
def _meta_backend(msg: BaseMessage) -> tuple[str | None, int]:
    meta = msg.response_metadata or {}
    router = meta.get("contextharbor") or {}
    attempts = router.get("attempts") or []
    return meta.get("backend"), len(attempts)


def _chunks_outcome(o: Outcome, chunks: list[AIMessageChunk]) -> None:
    seen = []
    text = []
    for c in chunks:
        b, n = _meta_backend(c)
        if b is not None:
            seen.append(b)
            if len(seen) == 1:
                o.attempts_before = n
        text.append(c.content if isinstance(c.content, str) else "")
    o.backends_seen = tuple(seen)
    o.backend = seen[0] if seen else None
    o.value = o.partial = "".join(text)


def _message_outcome(o: Outcome, msg: BaseMessage) -> None:
    o.backend, o.attempts_before = _meta_backend(msg)
    o.backends_seen = (o.backend,) if o.backend else ()
    if o.kind == "tools":
        o.value = _tool_calls(msg)
    else:
        o.value = msg.content


def _structured_outcome(o: Outcome, out: dict[str, Any]) -> None:
    raw = out["raw"]
    o.backend, o.attempts_before = _meta_backend(raw)
    o.backends_seen = (o.backend,) if o.backend else ()
    parsed = out.get("parsed")
    o.value = parsed.model_dump() if isinstance(parsed, BaseModel) else parsed


def _kind(op: str) -> str:
    op = op.removeprefix("a") if op in ASYNC_OPS else op
    return op if op in ("tools", "structured", "embed") else "text"


def _embed_outcome(o: Outcome, vectors: list[list[float]]) -> None:
    # Both servers hold the same build, whose vectors do not depend on the server
    # (Oracle.precompute checks that), so any answer is compared with the GPU's.
    o.backend, o.value = "gpu", vectors


def run_sync_op(
    model: HybridChatOllama,
    phase: int,
    op: str,
    prompt: str,
    emb: HybridOllamaEmbeddings | None = None,
) -> list[Outcome]:
    t0 = time.perf_counter()
    o = Outcome(phase, op, prompt, 0.0, kind=_kind(op))
    chunks: list[AIMessageChunk] = []
    try:
        if op == "embed":
            assert emb is not None
            _embed_outcome(o, emb.embed_documents(embed_texts(prompt)))
        elif op == "invoke":
            _message_outcome(o, model.invoke(prompt))
        elif op == "stream":
            for c in model.stream(prompt):
                chunks.append(c)
            _chunks_outcome(o, chunks)
        elif op == "stream_abandon":
            it = model.stream(prompt)
            chunks.append(next(it))
            it.close()  # the caller stops reading: the attempt ends with GeneratorExit
            _chunks_outcome(o, chunks)
            o.abandoned = True
        elif op == "batch":
            prompts = [f"{prompt} #{k}" for k in range(3)]
            res = model.batch(prompts, return_exceptions=True)
            elapsed = time.perf_counter() - t0
            outs = []
            for p, r in zip(prompts, res, strict=True):
                item = Outcome(phase, op, p, elapsed)
                if isinstance(r, BaseException):
                    item.error = r
                else:
                    _message_outcome(item, r)
                outs.append(item)
            return outs
        elif op == "tools":
            _message_outcome(o, model.bind_tools([get_weather]).invoke(f"weather in {prompt}"))
            o.prompt = f"weather in {prompt}"
        elif op == "structured":
            out = model.with_structured_output(Answer, include_raw=True).invoke(prompt)
            _structured_outcome(o, out)  # type: ignore[arg-type]
        else:
            raise ValueError(op)
    except Exception as exc:
        o.error = exc
        if chunks:
            _chunks_outcome(o, chunks)
    if op == "tools":
        o.prompt = f"weather in {prompt}"
    o.elapsed = time.perf_counter() - t0
    return [o]


async def run_async_op(
    model: HybridChatOllama,
    phase: int,
    op: str,
    prompt: str,
    emb: HybridOllamaEmbeddings | None = None,
) -> list[Outcome]:
    t0 = time.perf_counter()
    o = Outcome(phase, op, prompt, 0.0, kind=_kind(op))
    chunks: list[AIMessageChunk] = []
    try:
        if op == "aembed":
            assert emb is not None
            _embed_outcome(o, await emb.aembed_documents(embed_texts(prompt)))
        elif op == "ainvoke":
            _message_outcome(o, await model.ainvoke(prompt))
        elif op == "astream":
            async for c in model.astream(prompt):
                chunks.append(c)
            _chunks_outcome(o, chunks)
        elif op == "astream_abandon":
            agen = model.astream(prompt)
            chunks.append(await agen.__anext__())
            await agen.aclose()  # type: ignore[attr-defined]
            _chunks_outcome(o, chunks)
            o.abandoned = True
        elif op == "abatch":
            prompts = [f"{prompt} #{k}" for k in range(3)]
            res = await model.abatch(prompts, return_exceptions=True)
            elapsed = time.perf_counter() - t0
            outs = []
            for p, r in zip(prompts, res, strict=True):
                item = Outcome(phase, op, p, elapsed)
                if isinstance(r, BaseException):
                    item.error = r
                else:
                    _message_outcome(item, r)
                outs.append(item)
            return outs
        elif op == "atools":
            msg = await model.bind_tools([get_weather]).ainvoke(f"weather in {prompt}")
            _message_outcome(o, msg)
        elif op == "astructured":
            out = await model.with_structured_output(Answer, include_raw=True).ainvoke(prompt)
            _structured_outcome(o, out)  # type: ignore[arg-type]
        else:
            raise ValueError(op)
    except Exception as exc:
        o.error = exc
        if chunks:
            _chunks_outcome(o, chunks)
    if op == "atools":
        o.prompt = f"weather in {prompt}"
    o.elapsed = time.perf_counter() - t0
    return [o]


# ---------------------------------------------------------------------------- the run
def _circuits(model: HybridChatOllama) -> dict[str, str]:
    return {name: s["circuit"] for name, s in model.stats().items()}


def _fd_count() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return -1


def _settle(baseline: int, counter: Callable[[], int], limit_s: float = 5.0) -> int:
    """Wait (bounded) for worker threads/sockets that are already exiting."""
    deadline = time.monotonic() + limit_s
    n = counter()
    while n > baseline and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.05)
        n = counter()
    return n


class ChaosRun:
    """Servers, oracle and model for one or more seeded runs."""

    def __init__(self, token_delay: float = 0.003) -> None:
        self.servers = {
            "gpu": StandInProcess("gpu", 1.0, token_delay),
            "cpu": StandInProcess("cpu", 0.0, token_delay),
        }
        for s in self.servers.values():
            s.start()
        self.oracle = Oracle()
        self.blackholes: dict[str, Blackhole] = {}
        self.foreign: dict[str, ForeignServer] = {}
        self._elapsed: list[float] = []

    def close(self) -> None:
        for b in self.blackholes.values():
            b.close()
        for f in self.foreign.values():
            f.close()
        for s in self.servers.values():
            s.stop()
        self.oracle.close()

    def __enter__(self) -> ChaosRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -------------------------------------------------------------- server actions
    def _targets(self, ph: Phase) -> list[StandInProcess]:
        return list(self.servers.values()) if ph.target == "both" else [self.servers[ph.target]]

    def _apply(self, ph: Phase) -> threading.Thread | None:
        if ph.action == "fault":
            for s in self._targets(ph):
                kw = dict(ph.fault_kw)
                if ph.fault not in ("refuse", "accept_hang"):
                    kw["paths"] = ["/api/chat", "/api/embed"]  # chat and embeddings meet it
                if ph.count is not None:
                    kw["count"] = ph.count
                s.command(op="inject", fault=ph.fault, **kw)
        elif ph.action == "kill":
            target = self.servers[ph.target]
            timer = threading.Timer(ph.kill_after_s, target.kill)
            timer.start()
            return timer
        elif ph.action == "blackhole":
            s = self.servers[ph.target]
            s.kill()
            self.blackholes[ph.target] = Blackhole(s.port)
        elif ph.action == "foreign":
            s = self.servers[ph.target]
            s.kill()
            self.foreign[ph.target] = ForeignServer(s.port)
        elif ph.action == "both_down":
            for s in self.servers.values():
                s.kill()
        return None

    def _restore(self) -> None:
        for name, b in list(self.blackholes.items()):
            b.close()
            del self.blackholes[name]
        for name, f in list(self.foreign.items()):
            f.close()
            del self.foreign[name]
        for s in self.servers.values():
            if s.alive:
                s.command(op="clear")
            else:
                s.kill()
                s.start()

    # -------------------------------------------------------------- model
    def backends(self) -> list[BackendConfig]:
        """The two servers, as both the chat model and the embedder see them."""
        return [
            BackendConfig(name="gpu", base_url=self.servers["gpu"].url, timeouts=TIMEOUTS),
            BackendConfig(
                name="cpu", kind="cpu", base_url=self.servers["cpu"].url, timeouts=TIMEOUTS
            ),
        ]

    def make_model(self, clock: FakeClock) -> HybridChatOllama:
        return HybridChatOllama(
            model=MODEL,
            backends=self.backends(),
            clock=clock,
        )

    def make_embedder(self, clock: FakeClock) -> HybridOllamaEmbeddings:
        return HybridOllamaEmbeddings(
            model=EMBED,
            backends=self.backends(),
            clock=clock,
        )

    def budget(self, model: HybridChatOllama) -> float:
        t = TIMEOUTS
        if t.total is not None:
            return t.total + SLACK_S
        per_attempt = t.connect + t.first_token + t.idle
        attempts = len(NAMES) * (model.max_retries + 1)
        return attempts * per_attempt + SLACK_S

    def run(
        self,
        seed: int,
        phases: int,
        calls_per_phase: int,
        *,
        workers: int = 3,
        schedule: list[Phase] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> Report:
        report = Report(seed)
        self._elapsed = []
        sched = schedule if schedule is not None else make_schedule(seed, phases, calls_per_phase)
        self.precompute(sched)
        gc.collect()
        threads0, fds0 = threading.active_count(), _fd_count()
        clock = FakeClock()
        model = self.make_model(clock)
        emb = self.make_embedder(clock)
        checker = Checker(self.oracle, self.budget(model))
        t_start = time.perf_counter()
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="chaos")
        try:
            for ph in sched:
                report.actions[ph.action] += 1
                if ph.action == "bad_request":
                    before = _circuits(model)
                    for o in self._bad_requests(model, ph):
                        report.calls += 1
                        report.bad_requests += 1
                        if o.error is not None:
                            report.errors[type(o.error).__name__] += 1
                        checker.check_bad_request(o, before, _circuits(model))
                outcomes = self._run_phase(model, emb, ph, pool, workers)
                for o in outcomes:
                    self._tally(report, o)
                    # After a bad request the servers are as healthy as before it.
                    checker.check(o, healthy=ph.action in ("healthy", "bad_request"))
                self._restore()
                # Every breaker may let a trial call through now: no sleeping, the clock moves.
                clock.advance(model.breaker.max_cooldown + model.probe_ttl + 1)
                model.refresh()
                for o in self._warm_up(model, emb, ph.index):
                    self._tally(report, o)
                    checker.check(o, healthy=False)
                quiet = model.stats()
                for name, s in emb.shared_router.stats().items():
                    quiet[f"embedder {name}"] = s
                for name, s in quiet.items():
                    if s["in_flight"] != 0:
                        checker.violations.append(
                            f"phase {ph.index} ({ph.describe()}): {name} in_flight "
                            f"{s['in_flight']} with no call running"
                        )
                if log is not None:
                    log(f"phase {ph.index:3d} {ph.describe():60s} calls {len(outcomes)}")
        finally:
            pool.shutdown(wait=True)
        report.wall_s = time.perf_counter() - t_start
        outcomes = []  # their exceptions' tracebacks reference the model
        checker.check_stats(model.stats(), report)
        checker.check_embedder_stats(emb.shared_router.stats())
        model.close()
        emb.close()
        gc.collect()
        threads1 = _settle(threads0, threading.active_count)
        fds_closed = _settle(fds0, _fd_count)
        if fds_closed > fds0:
            checker.violations.append(
                f"open file descriptors {fds0} -> {fds_closed} after close() "
                "(the model still referenced)"
            )
        # And once the caller drops them, nothing they held may stay open either.
        del model, emb
        gc.collect()
        fds1 = _settle(fds0, _fd_count)
        report.threads, report.fds = (threads0, threads1), (fds0, fds1)
        report.fds_after_close = fds_closed
        if threads1 > threads0:
            names = sorted(t.name for t in threading.enumerate())
            checker.violations.append(f"threads {threads0} -> {threads1} after close(): {names}")
        if fds1 > fds0:
            if os.environ.get("CHAOS_DEBUG_FDS"):
                for fd in os.listdir("/proc/self/fd"):
                    with contextlib.suppress(OSError):
                        print(fd, os.readlink(f"/proc/self/fd/{fd}"))
            checker.violations.append(
                f"open file descriptors {fds0} -> {fds1} after close() and dropping the model"
            )
        report.violations = checker.violations
        report.max_over_budget_ratio = max(
            (o / checker.budget_s for o in self._elapsed), default=0.0
        )
        return report

    def precompute(self, sched: list[Phase]) -> None:
        """Every expected answer up front, so the oracle opens no connection (and no
        server thread) during the run and the thread/descriptor counts stay comparable."""
        for ph in sched:
            for op, prompt in ph.ops:
                if op in ("batch", "abatch"):
                    items = [("text", f"{prompt} #{k}") for k in range(3)]
                elif op in ("tools", "atools"):
                    items = [("tools", f"weather in {prompt}")]
                elif op in ("structured", "astructured"):
                    items = [("structured", prompt)]
                elif op in ("embed", "aembed"):
                    items = [("embed", prompt)]
                else:
                    items = [("text", prompt)]
                for kind, p in items:
                    for name in NAMES:
                        self.oracle.expected(kind, name, p)
            for k in range(4):
                for name in NAMES:
                    self.oracle.expected("text", name, f"warm-up {ph.index}-{k}")
                    self.oracle.expected("embed", name, f"warm-up {ph.index}-{k}")
        for key, value in list(self.oracle._cache.items()):
            if key[0] == "embed" and key[1] == "gpu":
                assert value == self.oracle._cache[("embed", "cpu", key[2])], key

    def _tally(self, report: Report, o: Outcome) -> None:
        report.calls += 1
        report.ops[o.op] += 1
        self._elapsed.append(o.elapsed)
        if o.error is None and o.abandoned:
            report.abandoned += 1
        elif o.error is None:
            report.ok += 1
            if o.backend:
                report.served[o.backend] += 1
            if o.attempts_before:
                report.fallbacks += 1
        else:
            report.errors[type(o.error).__name__] += 1

    def _bad_requests(self, model: HybridChatOllama, ph: Phase) -> list[Outcome]:
        """The invalid option, sync and async, before the phase's valid calls."""
        outs = []
        for op in ("invoke", "ainvoke"):
            prompt = f"bad request {ph.index} {op}"
            o = Outcome(ph.index, op, prompt, 0.0)
            t0 = time.perf_counter()
            try:
                if op == "invoke":
                    msg = model.invoke(prompt, options=BAD_OPTIONS)
                else:
                    msg = asyncio.run(model.ainvoke(prompt, options=BAD_OPTIONS))
                o.partial = str(msg.content)
            except Exception as exc:
                o.error = exc
            o.elapsed = time.perf_counter() - t0
            outs.append(o)
        return outs

    def _warm_up(
        self, model: HybridChatOllama, emb: HybridOllamaEmbeddings, phase: int
    ) -> list[Outcome]:
        """Sequential calls until every circuit is closed again (each trial call succeeds),
        so a healthy phase really starts healthy. At most a few calls each."""
        outs: list[Outcome] = []
        for k in range(4):
            if all(s["circuit"] == "closed" for s in model.stats().values()):
                break
            outs += run_sync_op(model, phase, "invoke", f"warm-up {phase}-{k}")
        for k in range(4):
            if all(s["circuit"] == "closed" for s in emb.shared_router.stats().values()):
                break
            outs += run_sync_op(model, phase, "embed", f"warm-up {phase}-{k}", emb)
        return outs

    def _run_phase(
        self,
        model: HybridChatOllama,
        emb: HybridOllamaEmbeddings,
        ph: Phase,
        pool: ThreadPoolExecutor,
        workers: int,
    ) -> list[Outcome]:
        sync_ops = [(op, p) for op, p in ph.ops if op not in ASYNC_OPS]
        async_ops = [(op, p) for op, p in ph.ops if op in ASYNC_OPS]

        async def run_async() -> list[Outcome]:
            sem = asyncio.Semaphore(workers)

            async def one(op: str, p: str) -> list[Outcome]:
                async with sem:
                    return await run_async_op(model, ph.index, op, p, emb)

            groups = await asyncio.gather(*(one(op, p) for op, p in async_ops))
            return [o for g in groups for o in g]

        timer = self._apply(ph)
        async_future = pool.submit(asyncio.run, run_async()) if async_ops else None
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="chaos-sync") as sync:
            futures = [sync.submit(run_sync_op, model, ph.index, op, p, emb) for op, p in sync_ops]
            outs = [o for f in futures for o in f.result()]
        if async_future is not None:
            outs += async_future.result()
        if timer is not None:
            timer.join()
        return outs


# ---------------------------------------------------------------------------- self-check
@contextlib.contextmanager
def _patched(obj: Any, name: str, make: Callable[[Any], Any]) -> Iterator[None]:
    original = getattr(obj, name)
    setattr(obj, name, make(original))
    try:
        yield
    finally:
        setattr(obj, name, original)


def bug_raw_error_leak() -> contextlib.AbstractContextManager[None]:
    """A classifier bug: a transport failure (refused, reset, cut) is re-raised as the raw
    httpx error instead of failing over."""

    def make(orig: Any) -> Any:
        def settle(self: Any, *a: Any) -> bool:
            exc = next(x for x in a if isinstance(x, BaseException))
            return bool(orig(self, *a)) and not isinstance(exc, httpx.TransportError)

        return settle

    return _patched(HybridChatOllama, "_settle_failure", make)


def bug_slot_leak() -> contextlib.AbstractContextManager[None]:
    """A lifecycle bug: every 5th release of an in-flight slot is forgotten."""

    def make(orig: Any) -> Any:
        n = [0]

        def release(self: Any, name: str) -> None:
            n[0] += 1
            if n[0] % 5:
                orig(self, name)

        return release

    return _patched(Router, "release", make)


def bug_splice() -> contextlib.AbstractContextManager[None]:
    """A failover bug: a stream that broke after text reached the caller is continued on
    the next backend instead of raising StreamInterruptedError."""

    def make(orig: Any) -> Any:
        def settle(self: Any, att: Any, *a: Any) -> bool:
            att.committed = False  # forget that text was delivered
            return bool(orig(self, att, *a))

        return settle

    return _patched(HybridChatOllama, "_settle_failure", make)


#: name -> (patch, substrings of which the checker must report at least one)
INJECTED_BUGS: dict[
    str, tuple[Callable[[], contextlib.AbstractContextManager[None]], tuple[str, ...]]
] = {
    "raw transport error leaks": (bug_raw_error_leak, ("undocumented error httpx.",)),
    "in-flight slot not released": (bug_slot_leak, ("in_flight",)),
    # A spliced stream shows as chunks from two backends, as text that is neither
    # backend's answer, or as langchain-core failing to merge the two backends' metadata.
    "text spliced across backends": (
        bug_splice,
        ("chunks from several backends", "own answer", "undocumented error"),
    ),
}


def self_check_schedule(bug: str, seed: int = 7) -> list[Phase]:
    """A tiny fixed schedule on which ``bug`` must show."""
    rng = random.Random(seed)

    def ops(names: tuple[str, ...], n: int, i: int) -> list[tuple[str, str]]:
        return [(names[k % len(names)], f"self-check {i}-{rng.randrange(10**6)}") for k in range(n)]

    if bug == "raw transport error leaks":
        # A stream cut on the GPU: /api/tags keeps answering, so the GPU is planned first.
        cut = {"after_chunks": 2}
        return [
            Phase(0, "fault", "gpu", "cut_mid_stream", cut, ops=ops(("invoke", "ainvoke"), 4, 0))
        ]
    if bug == "in-flight slot not released":
        return [Phase(0, "healthy", ops=ops(("invoke", "astream"), 6, 0))]
    if bug == "text spliced across backends":
        return [
            Phase(
                0,
                "fault",
                "gpu",
                "cut_mid_stream",
                {"after_chunks": 3},
                ops=ops(("stream", "astream"), 4, 0),
            )
        ]
    raise ValueError(bug)


def as_json(report: Report) -> str:
    return json.dumps(report.as_dict(), indent=2, default=str)


def first(items: list[str], n: int = 5) -> str:
    return "\n".join(items[:n]) + (f"\n... and {len(items) - n} more" if len(items) > n else "")


__all__ = [
    "INJECTED_BUGS",
    "OPS",
    "ChaosRun",
    "Phase",
    "Report",
    "as_json",
    "first",
    "make_schedule",
    "self_check_schedule",
]
