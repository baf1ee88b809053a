"""One worker process of the multi-process fleet test (and of benchmarks/bench_fleet.py).

Run as ``python fleet_worker.py CONFIG.json``. It builds one HybridChatOllama per mode named
in the config (each with its two stand-in URLs and its ``shared_state``: a Redis URL for
fleet mode, ``"local"`` for a worker on its own), then follows the phases
the parent announces with files in ``dir`` (``go.<phase>``), writing ``done.<phase>.<i>``
after each and the record of every call to ``result.<i>.json`` at the end. Files are polled,
so the parent orders phases across processes without any timing assumption.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any


def wait_for(path: Path) -> None:
    while not path.exists():  # polling a condition set by the parent, not a timeout
        time.sleep(0.002)


def loop(call: Any, n: int, until: float, phase: str, mode: str) -> None:
    """``n`` calls, and more until the monotonic time ``until`` (for timed phases)."""
    done = 0
    while done < n or time.monotonic() < until:
        call(phase, mode)
        done += 1


def main() -> None:
    cfg = json.loads(Path(sys.argv[1]).read_text())
    from langchain_contextharbor import (
        BackendConfig,
        BreakerPolicy,
        HybridChatOllama,
        SpeedPrior,
        Timeouts,
    )

    d = Path(cfg["dir"])
    i = int(cfg["index"])
    t = Timeouts(connect=2.0, first_token=10.0, idle=10.0, probe=2.0)
    models: dict[str, HybridChatOllama] = {}
    for mode, m in cfg["modes"].items():
        urls = m["urls"]
        models[mode] = HybridChatOllama(
            model=cfg["model"],
            backends=[
                BackendConfig(name="gpu", base_url=urls[0], kind="gpu", timeouts=t),
                BackendConfig(name="cpu", base_url=urls[1], kind="cpu", timeouts=t),
            ],
            shared_state=m.get("shared_state") or "local",
            breaker=BreakerPolicy(cooldown=600.0, max_cooldown=600.0),
            background_probes=bool(m.get("probes", False)),
            speed_prior=SpeedPrior(**m.get("speed_prior", {})),
            probe_ttl=float(m.get("probe_ttl", 10.0)),
        )
    records: list[dict[str, Any]] = []
    lock = threading.Lock()

    def call(phase: str, mode: str) -> None:
        start = time.time()
        t0 = time.perf_counter()
        try:
            msg = models[mode].invoke("hello")
            meta = msg.response_metadata["contextharbor"]
            rec = {"backend": meta["backend"], "attempts": meta["attempts"], "ok": True}
        except Exception as exc:  # recorded, the parent asserts on it
            rec = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "attempts": []}
        rec.update(phase=phase, mode=mode, seconds=time.perf_counter() - t0, start=start)
        with lock:
            records.append(rec)

    (d / f"ready.{i}").touch()
    for phase in cfg["phases"]:
        name, mode = phase["name"], phase["mode"]
        wait_for(d / f"go.{name}")
        if phase.get("after_first") and i != 0:
            wait_for(d / f"first.{name}")
        conc = int(phase.get("concurrency", 1))
        calls = int(phase.get("calls", 0))
        until = time.monotonic() + float(phase.get("seconds", 0.0))

        with ThreadPoolExecutor(conc) as pool:
            share = [calls // conc + (1 if k < calls % conc else 0) for k in range(conc)]
            for f in [pool.submit(loop, call, n, until, name, mode) for n in share]:
                f.result()
        if phase.get("after_first") and i == 0:
            (d / f"first.{name}").touch()
        (d / f"done.{name}.{i}").touch()
    (d / f"result.{i}.json").write_text(json.dumps(records))
    for m in models.values():
        m.close()


if __name__ == "__main__":
    main()
