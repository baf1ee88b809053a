"""Four worker processes, one Redis, two stand-ins with one slot each (num_parallel=1).

Each worker runs its own HybridChatOllama, as gunicorn workers would. The same workers also
run a twin model without fleet mode on a second pair of stand-ins, as the control: the test
shows what fleet mode changes, so it fails if sharing breaks.

* load: 4 workers x 1 call at a time. Fleet mode keeps each server's load (generating +
  queued, sampled at the server) within what spill-over allows: 2 per server. Alone, every
  worker sees 0 in flight and sends everything to the GPU.
* death: both GPUs are stopped; worker 0 calls first, then the others. With fleet mode the
  fleet pays one failed attempt (the circuit opens for everyone); alone, every worker pays one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langchain_contextharbor.testing import ChatTurn, EngineEvent, OllamaStandIn, ScriptedEngine
from langchain_contextharbor.testing.pytest_plugin import StandInFactory
from langchain_contextharbor.testing.redis_server import RedisServer

WORKERS = 4
# The stand-ins are equally fast; say so, or the default prior (GPU ~10x faster) would rightly
# queue on the GPU instead of spilling over.
EQUAL = {"cpu_tokens_per_s": 60.0, "cpu_first_token_s": 0.15}
CALLS = 6
WORKER = Path(__file__).with_name("fleet_worker.py")
ROOT = Path(__file__).resolve().parents[2]


def wait_files(d: Path, prefix: str, n: int, procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + 120  # a safety net against a crashed worker, not a wait
    while len(list(d.glob(prefix + "*"))) < n:
        for p in procs:
            if p.poll() not in (None, 0):
                raise AssertionError(f"worker exited with {p.returncode}: {p.stderr!r}")
        assert time.monotonic() < deadline, f"workers did not reach {prefix}"
        time.sleep(0.005)


@dataclass
class CountingEngine(ScriptedEngine):
    """Scripted answers, counting the chats generating right now.

    The stand-in closes the engine's generator before it writes the final ``done`` line, so a
    chat stops counting before its client can see the answer end (and release its fleet
    count). The server's own ``in_flight`` also holds the tail of an answer already complete
    for the client, which on a loaded machine let the next call queue behind it and be
    counted as a third concurrent call.
    """

    active: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def chat(self, turn: ChatTurn) -> Iterator[EngineEvent]:
        with self.lock:
            self.active += 1
        try:
            yield from super().chat(turn)
        finally:
            with self.lock:
                self.active -= 1


class Peak:
    """Samples each stand-in's load (generating + queued) while a phase runs."""

    def __init__(self, servers: dict[str, OllamaStandIn]) -> None:
        self.servers = servers
        self.peak = dict.fromkeys(servers, 0)
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for k, s in self.servers.items():
                engine = s.engine
                assert isinstance(engine, CountingEngine)
                # Read under the stand-in's slot lock: the queue cannot change meanwhile, so
                # no call is counted both queued and generating.
                with s.slots.lock:
                    load = engine.active + s.slots.waiting
                self.peak[k] = max(self.peak[k], load)
            time.sleep(0.0005)

    def __enter__(self) -> Peak:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


def test_four_workers_share_load_and_a_dead_gpu_costs_one_attempt(
    ollama_standin_factory: StandInFactory, redis_server: RedisServer, tmp_path: Path
) -> None:
    model = "llama3.2:1b"
    kw: dict[str, Any] = {"models": [model], "num_parallel": 1, "token_delay": 0.004}
    s = {
        name: ollama_standin_factory(
            name=name,
            gpu_fraction=1.0 if name.endswith("gpu") else 0.0,
            engine=CountingEngine(),
            **kw,
        )
        for name in ("fleet_gpu", "fleet_cpu", "local_gpu", "local_cpu")
    }
    phases = [
        {"name": "load-fleet", "mode": "fleet", "calls": CALLS},
        {"name": "load-local", "mode": "local", "calls": CALLS},
        {"name": "death-fleet", "mode": "fleet", "calls": 1, "after_first": True},
        {"name": "death-local", "mode": "local", "calls": 1, "after_first": True},
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("CONTEXTHARBOR_REDIS_URL", None)
    procs = []
    for i in range(WORKERS):
        cfg = {
            "index": i,
            "dir": str(tmp_path),
            "model": model,
            "modes": {
                "fleet": {
                    "urls": [s["fleet_gpu"].url, s["fleet_cpu"].url],
                    "shared_state": redis_server.url,
                    "speed_prior": EQUAL,
                },
                "local": {"urls": [s["local_gpu"].url, s["local_cpu"].url], "speed_prior": EQUAL},
            },
            "phases": phases,
        }
        path = tmp_path / f"cfg.{i}.json"
        path.write_text(json.dumps(cfg))
        procs.append(
            subprocess.Popen(
                [sys.executable, str(WORKER), str(path)], env=env, stderr=subprocess.PIPE
            )
        )
    try:
        wait_files(tmp_path, "ready.", WORKERS, procs)
        peaks = {}
        for name in ("load-fleet", "load-local"):
            with Peak(s) as p:
                (tmp_path / f"go.{name}").touch()
                wait_files(tmp_path, f"done.{name}.", WORKERS, procs)
            peaks[name] = dict(p.peak)
        s["fleet_gpu"].stop()
        s["local_gpu"].stop()
        for name in ("death-fleet", "death-local"):
            (tmp_path / f"go.{name}").touch()
            wait_files(tmp_path, f"done.{name}.", WORKERS, procs)
        for p in procs:
            assert p.wait(60) == 0, p.stderr.read() if p.stderr else ""
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    records = [
        r for i in range(WORKERS) for r in json.loads((tmp_path / f"result.{i}.json").read_text())
    ]
    assert all(r["ok"] for r in records), [r for r in records if not r["ok"]]

    fleet, local = peaks["load-fleet"], peaks["load-local"]
    # Fleet mode: spill-over on fleet-wide counts keeps each one-slot server at <= 2.
    assert fleet["fleet_gpu"] <= 2 and fleet["fleet_cpu"] <= 2, fleet
    assert fleet["fleet_cpu"] >= 1, fleet
    # Alone, each worker sees its own 0 calls in flight: all of them pile onto the GPU.
    assert local["local_gpu"] >= 3 and local["local_cpu"] == 0, local

    def gpu_failures(phase: str) -> int:
        return sum(
            1
            for r in records
            if r["phase"] == phase
            for a in r["attempts"]
            if a["backend"] == "gpu"
        )

    assert gpu_failures("death-fleet") == 1
    assert gpu_failures("death-local") == WORKERS
