"""Section 10: what ``contextharbor serve`` adds to a request, against calling the stand-in
directly.

The proxy runs as a user runs it (``python -m langchain_contextharbor.serve``, its own
process, uvicorn, access log off) in front of a GPU and a CPU stand-in in their own
processes. Proxy and stand-ins are pinned to core 1, the client to core 0. The same request
goes to the GPU stand-in directly and through the proxy (which routes it there), in
alternating blocks of 20, and the added latency is the median over paired blocks of (proxy
block median - direct block median), with the range over runs.

Run: ``python benchmarks/bench_serve.py --calls 300 --runs 3`` (part of ``make bench``).
Writes benchmarks/results/serve.json and the ``serve`` table of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx
from _bench import DASH, MODEL, ROOT, machine, pin_client, save, servers, update_doc

BLOCK = 20
HI = [{"role": "user", "content": "hi"}]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_proxy(gpu: str, cpu: str, core: int | None) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [
        sys.executable,
        "-m",
        "langchain_contextharbor.serve",
        "--backend",
        f"gpu={gpu}",
        "--backend",
        f"cpu={cpu}",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    pin = None
    if core is not None and hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > core:

        def pin() -> None:
            os.sched_setaffinity(0, {core})

    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL, preexec_fn=pin)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/api/version", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the proxy did not start")


def paths(http: httpx.Client, base: str) -> dict[str, Callable[[], Any]]:
    import ollama

    oc = ollama.Client(host=base, timeout=30)

    def chat_whole() -> None:
        r = http.post(base + "/api/chat", json={"model": MODEL, "messages": HI, "stream": False})
        assert r.status_code == 200, r.text

    def chat_stream() -> None:
        for _ in oc.chat(model=MODEL, messages=HI, stream=True):
            pass

    def embed() -> None:
        r = http.post(base + "/api/embed", json={"model": "nomic-embed-text", "input": "hi"})
        assert r.status_code == 200, r.text

    return {
        "`POST /api/chat` (stream: false)": chat_whole,
        "`ollama.Client.chat` (stream)": chat_stream,
        "`POST /api/embed`": embed,
    }


def measure(direct: str, proxy: str, calls: int) -> dict[str, dict[str, Any]]:
    with httpx.Client(timeout=30) as http:
        d, p = paths(http, direct), paths(http, proxy)
        for fn in [*d.values(), *p.values()]:
            for _ in range(30):
                fn()
        out: dict[str, dict[str, Any]] = {}
        for name in d:
            direct_ts: list[float] = []
            proxy_ts: list[float] = []
            added: list[float] = []
            for _ in range(max(1, calls // BLOCK)):
                blocks = []
                for fn, ts in ((d[name], direct_ts), (p[name], proxy_ts)):
                    block = []
                    for _ in range(BLOCK):
                        t = time.perf_counter()
                        fn()
                        block.append(time.perf_counter() - t)
                    ts.extend(block)
                    blocks.append(statistics.median(block))
                added.append(blocks[1] - blocks[0])
            out[name] = {
                "direct_ms": statistics.median(direct_ts) * 1000,
                "proxy_ms": statistics.median(proxy_ts) * 1000,
                "added_ms": statistics.median(added) * 1000,
            }
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument(
        "--proxy-core",
        type=int,
        default=None,
        help="pin the proxy to this core (default: not pinned; the stand-ins are on core 1)",
    )
    args = ap.parse_args()
    pin_client()
    info = machine()
    runs: list[dict[str, dict[str, Any]]] = []
    with servers(("gpu", 1.0, 0.0, 64), ("cpu", 0.0, 0.0, 64)) as (gpu, cpu):
        proc, proxy = start_proxy(gpu.url, cpu.url, args.proxy_core)
        try:
            for _ in range(args.runs):
                runs.append(measure(gpu.url, proxy, args.calls))
        finally:
            proc.kill()
            proc.wait()
    names = list(runs[0])
    rows = []
    result: dict[str, Any] = {"machine": info, "command": " ".join(sys.argv), "paths": {}}
    for name in names:
        added = [r[name]["added_ms"] for r in runs]
        direct = statistics.median(r[name]["direct_ms"] for r in runs)
        via = statistics.median(r[name]["proxy_ms"] for r in runs)
        med = statistics.median(added)
        result["paths"][name] = {"runs": [r[name] for r in runs]}
        rows.append(
            f"| {name} | {direct:.3f} ms | {via:.3f} ms | {med:.3f} ms "
            f"({min(added):.3f}{DASH}{max(added):.3f}) |"
        )
    load = info["load_1min_at_start"]
    md = "\n".join(
        [
            f"Measured {info['date_utc']} UTC, load average "
            f"{load:.2f} at start, {info['cores']} cores; "
            f"{args.calls} calls per path and run, {args.runs} runs, blocks of {BLOCK}. "
            "Added: the median over paired blocks of (proxy block median - direct block "
            "median), median and range over runs.",
            "",
            "| path | direct (median) | through the proxy (median) | added (median) |",
            "|---|---|---|---|",
            *rows,
        ]
    )
    save("serve", result)
    update_doc("serve", md)
    print(md)


if __name__ == "__main__":
    main()
