"""Overload is not death (issue 17, item 5), over real HTTP with an injected clock.

A healthy server under a rush of new connections fills its accept queue, and the kernel drops
further handshakes: the clients see connect timeouts while the calls it accepted succeed. Here
a listener with a backlog of one that accepts one connection every few milliseconds, piping
each to a stand-in, gives exactly that on loopback (no fault injected: real SYNs dropped by a
real kernel). The breaker must tell it from a refused port, which still opens at once.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from langchain_contextharbor import (
    BackendConfig,
    BreakerPolicy,
    HybridChatOllama,
    NoBackendAvailableError,
    Timeouts,
)
from langchain_contextharbor.testing import Fault, OllamaStandIn
from langchain_contextharbor.testing.clock import FakeClock

ROOMY = Timeouts(connect=10.0, first_token=30.0, idle=30.0, probe=10.0)
# The connect deadline the rush runs into: a dropped SYN is retransmitted after 1 s, so any
# connection the front does not take into its queue within this deadline times out.
RUSHED = Timeouts(connect=0.25, first_token=30.0, idle=30.0, probe=10.0)


class SlowAcceptFront:
    """A loopback listener in front of ``target`` that is slow to accept: backlog 1, one
    ``accept()`` every ``gap`` seconds, each accepted connection piped both ways to the
    target. Like a busy server's accept loop, it never refuses; it is just behind."""

    def __init__(self, target_port: int, gap: float) -> None:
        self.target_port = target_port
        self.gap = gap
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.port = int(self.sock.getsockname()[1])
        self.accepted = 0
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []
        self._t = threading.Thread(target=self._accept_loop, daemon=True)
        self._t.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()
            self._stop.wait(self.gap)  # the server's pace, not a test waiting for something

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        for c in self._conns:
            try:
                c.close()
            except OSError:
                pass


@pytest.fixture
def front(pair: tuple[OllamaStandIn, OllamaStandIn]) -> Iterator[SlowAcceptFront]:
    f = SlowAcceptFront(pair[1].port, gap=0.02)
    yield f
    f.close()


def test_connect_timeouts_under_a_rush_open_no_circuit_and_a_refused_port_opens_at_once(
    pair: tuple[OllamaStandIn, OllamaStandIn],
    make_model: Callable[..., HybridChatOllama],
    front: SlowAcceptFront,
    clock: FakeClock,
) -> None:
    gpu, _ = pair
    model = make_model(
        backends=[
            BackendConfig(name="gpu", base_url=gpu.url, kind="gpu", timeouts=ROOMY),
            BackendConfig(name="cpu", base_url=front.url, kind="cpu", timeouts=RUSHED),
        ],
        breaker=BreakerPolicy(cooldown=60),
        max_retries=1,  # a call whose connection timed out plans again (the CPU is still open)
    )
    assert all(p.ok for p in model.refresh().values())  # both answered: evidence of life
    gpu.inject(Fault.REFUSE)  # the GPU dies: its port refuses

    first = model.invoke("hi")  # pays for the refused GPU once, the circuit opens at once
    assert first.response_metadata["backend"] == "cpu"
    router = model.router
    assert router.get("gpu").breaker.state == "open"
    assert len(first.response_metadata["contextharbor"]["attempts"]) == 1

    outcomes: list[str] = []
    lock = threading.Lock()
    callers = 24
    start = threading.Barrier(callers)

    def caller(_: int) -> None:
        start.wait()  # all at once: a rush, however slowly this machine starts threads
        for _ in range(3):
            try:
                msg = model.invoke("hi")
                meta = msg.response_metadata["contextharbor"]
                skipped = [s["reason"] for s in meta["skipped"] if s["backend"] == "cpu"]
                out = "ok" if not skipped else f"skipped cpu: {skipped}"
            except NoBackendAvailableError as exc:
                out = f"no backend: {exc}"
            except Exception as exc:  # a call whose CPU attempts both timed out
                out = type(exc).__name__
            with lock:
                outcomes.append(out)

    # 24 callers open 24 new connections at once; the front takes about one per 20 ms.
    with ThreadPoolExecutor(callers) as pool:
        list(pool.map(caller, range(callers)))

    cpu = router.stats()["cpu"]
    assert cpu["failures"].get("connect", 0) >= 1, "no connect timeout: the rush did not happen"
    assert cpu["circuit"] == "closed", cpu
    assert not [o for o in outcomes if o.startswith(("no backend", "skipped"))], outcomes
    assert outcomes.count("ok") >= len(outcomes) // 3, outcomes
    # Calls keep succeeding on the CPU; the GPU's circuit stayed open (one attempt, ever).
    for _ in range(3):
        assert model.invoke("hi").response_metadata["backend"] == "cpu"
    assert router.stats()["gpu"]["failures"] == {"connect": 1}


def test_a_connect_timeout_with_no_sign_of_life_still_opens(
    pair: tuple[OllamaStandIn, OllamaStandIn],
    make_model: Callable[..., HybridChatOllama],
) -> None:
    """The same slow port, never seen answering (no probe, no success): no evidence that it
    is only busy, so its first connect timeout counts as before."""
    gpu, _ = pair
    hold = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    hold.bind(("127.0.0.1", 0))
    hold.listen(0)  # never accepts: the queue fills with the first connections
    port = hold.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):  # fill the accept queue so the next handshake is dropped
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            fillers.append(s)
        model = make_model(
            backends=[
                BackendConfig(name="gpu", base_url=gpu.url, kind="gpu", timeouts=ROOMY),
                BackendConfig(
                    name="cpu", base_url=f"http://127.0.0.1:{port}", kind="cpu", timeouts=RUSHED
                ),
            ],
            breaker=BreakerPolicy(cooldown=60),
        )
        gpu.inject(Fault.REFUSE)
        with pytest.raises(Exception):  # noqa: B017 - whichever error: both failed
            model.invoke("hi")
        stats = model.router.stats()
        assert stats["cpu"]["failures"] == {"connect": 1}
        assert (stats["gpu"]["circuit"], stats["cpu"]["circuit"]) == ("open", "open")
    finally:
        for s in fillers:
            s.close()
        hold.close()


def test_a_call_finding_every_circuit_open_tries_the_one_a_probe_says_is_up(
    pair: tuple[OllamaStandIn, OllamaStandIn],
    make_model: Callable[..., HybridChatOllama],
    clock: FakeClock,
) -> None:
    gpu, cpu = pair
    model = make_model(timeouts=ROOMY, breaker=BreakerPolicy(cooldown=600, max_cooldown=600))
    gpu.inject(Fault.REFUSE)
    # A 502 from a gateway in front of the CPU counts at once (a lone 500 is held back until
    # another server shows it was not the request's fault: _failover): both circuits open.
    cpu.inject(Fault.HTTP_ERROR, count=1, status=502, message="bad gateway")
    with pytest.raises(Exception):  # noqa: B017 - every attempt failed
        model.invoke("hi")
    clock.advance(1)
    model.refresh()  # the CPU answers: its circuit is half-open (the probe shortcut) ...
    cpu.inject(Fault.HTTP_ERROR, count=1, status=502, message="bad gateway")
    with pytest.raises(Exception):  # noqa: B017 - ... and its trial call fails
        model.invoke("hi")
    router = model.router
    assert [b.breaker.state for b in router.backends] == ["open", "open"]
    # The shortcut is spent for this outage: a probe that answers no longer reopens it, and
    # the cooldown is 20 minutes. Before, every call now failed fast although the probe
    # says the CPU is up.
    clock.advance(1)
    model.refresh()
    assert router.get("cpu").breaker.state == "open"
    msg = model.invoke("hi")
    assert msg.response_metadata["backend"] == "cpu"
    assert router.get("cpu").breaker.state == "closed"  # its success closed the circuit


def test_an_open_circuit_is_not_tried_on_a_probe_older_than_its_last_failure(
    pair: tuple[OllamaStandIn, OllamaStandIn],
    make_model: Callable[..., HybridChatOllama],
    clock: FakeClock,
) -> None:
    gpu, cpu = pair
    model = make_model(timeouts=ROOMY, breaker=BreakerPolicy(cooldown=600, max_cooldown=600))
    model.refresh()  # both answer (the evidence is older than any failure below)
    gpu.inject(Fault.REFUSE)
    cpu.inject(Fault.HTTP_ERROR, count=1, status=502, message="bad gateway")
    clock.advance(1)
    with pytest.raises(Exception):  # noqa: B017 - every attempt failed
        model.invoke("hi")
    with pytest.raises(NoBackendAvailableError):  # fail fast: no newer evidence
        model.invoke("hi")
    assert len(cpu.requests_to("/api/chat")) == 1
