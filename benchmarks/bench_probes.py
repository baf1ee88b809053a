"""Figure 4: probe traffic per backend per probe TTL at 10, 100 and 1,000 calls/s.

The router learns each server's state from probes (``/api/version``, ``/api/ps``,
``/api/tags``, ``/api/show``) that are refreshed off the hot path once they are older than
``probe_ttl``. Their number must depend on time, not on the call rate. The calls run at a
virtual rate: an injected clock advances 1/rate seconds per call (the router's TTLs read that
clock), so 1,000 calls/s can be simulated on a 2-core machine. The stand-ins' request logs
count what each server received.

Run: ``python benchmarks/bench_probes.py`` (part of ``make bench``). Writes
benchmarks/results/probes.json and the ``probes`` table of docs/benchmarks.md.
LiteLLM's Router sends no probes unless its background health check is configured (which
makes real completion calls), so there is no peer figure here.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from typing import Any

from _bench import MODEL, machine, save, update_doc

from langchain_contextharbor import BackendConfig, HybridChatOllama
from langchain_contextharbor.testing import OllamaStandIn
from langchain_contextharbor.testing.clock import FakeClock


def measure(rate: float, ttl: float, windows: int) -> dict[str, Any]:
    with (
        OllamaStandIn(name="gpu", loaded=[MODEL]) as gpu,
        OllamaStandIn(name="cpu", loaded=[MODEL], gpu_fraction=0.0) as cpu,
    ):
        clock = FakeClock()
        m = HybridChatOllama(
            model=MODEL,
            backends=[
                BackendConfig(name="gpu", base_url=gpu.url),
                BackendConfig(name="cpu", kind="cpu", base_url=cpu.url),
            ],
            clock=clock,
            probe_ttl=ttl,
        )
        m.invoke("warm up")
        time.sleep(0.2)  # let the first probes land before counting
        gpu.clear_log()
        cpu.clear_log()
        calls = int(rate * ttl * windows)
        for i in range(calls):
            m.invoke(f"q{i}")
            clock.advance(1.0 / rate)
        time.sleep(0.2)  # background probes already started finish
        m.close()
        out: dict[str, Any] = {"calls": calls, "virtual_seconds": calls / rate}
        for srv in (gpu, cpu):
            paths = Counter(r.path for r in srv.requests if r.path != "/api/chat")
            chat = sum(1 for r in srv.requests if r.path == "/api/chat")
            total = sum(paths.values())
            out[srv.name] = {
                "probe_requests": total,
                "per_ttl": round(total / windows, 2),
                "by_path": dict(paths),
                "chat_requests": chat,
            }
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ttl", type=float, default=1.0)
    ap.add_argument("--windows", type=int, default=5)
    ap.add_argument("--rates", type=float, nargs="+", default=[10, 100, 1000])
    args = ap.parse_args()
    meta: dict[str, Any] = {
        "machine": machine(),
        "probe_ttl_s": args.ttl,
        "windows": args.windows,
        "command": f"python benchmarks/bench_probes.py --ttl {args.ttl} --windows {args.windows}",
    }
    res = {str(int(r)): measure(r, args.ttl, args.windows) for r in args.rates}
    save("probes", {**meta, "results": res})
    lines = [
        f"Measured {meta['machine']['date_utc']} UTC; probe TTL {args.ttl:g} s (virtual), "
        f"{args.windows} TTL windows per rate.",
        "",
        "| calls/s | calls | GPU: probe requests per TTL | CPU: probe requests per TTL |",
        "|---|---|---|---|",
    ]
    for rate, r in res.items():
        lines.append(
            f"| {rate} | {r['calls']} | {r['gpu']['per_ttl']:g} | {r['cpu']['per_ttl']:g} |"
        )
    paths = sorted(set(res[next(iter(res))]["gpu"]["by_path"]))
    lines.append(f"\nProbe paths seen: {', '.join(f'`{p}`' for p in paths)}.")
    md = "\n".join(lines)
    update_doc("probes", md)
    print(md)


if __name__ == "__main__":
    main()
