"""Benchmarks behind the figures in docs/benchmarks.md.

Run: ``make bench`` (or ``.venv/bin/python benchmarks/bench_overhead.py [--calls N]``).
Everything runs against Ollama stand-ins on loopback, sharing this machine's cores, so
compare ratios, not absolute milliseconds. Writes ``benchmarks/results.json`` and prints a
Markdown table.

Measured:
1. per-call cost of HybridChatOllama vs plain ChatOllama vs ChatOllama.with_fallbacks
   (invoke and stream, interleaved call by call, medians), servers in subprocesses; and the
   router's own CPU time per call with the HTTP layer replaced by canned chunks;
2. cost of every call once the GPU server refuses connections;
3. cost of every call once the GPU server hangs before its first token;
4. throughput of N concurrent calls with spill-over on vs off (num_parallel=1 servers);
5. construction time and memory of one HybridChatOllama.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from langchain_ollama import ChatOllama

from langchain_contextharbor import BackendConfig, HybridChatOllama, Timeouts
from langchain_contextharbor.testing import Fault, OllamaStandIn

MODEL = "llama3.2:1b"


def _median_ms(fn: Callable[[], Any], n: int) -> float:
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1000


def _hybrid(gpu: OllamaStandIn, cpu: OllamaStandIn, **kw: Any) -> HybridChatOllama:
    t = kw.pop("timeouts", Timeouts())
    return HybridChatOllama(
        model=MODEL,
        backends=[
            BackendConfig(name="gpu", base_url=gpu.url, timeouts=t),
            BackendConfig(name="cpu", kind="cpu", base_url=cpu.url, timeouts=t),
        ],
        **kw,
    )


def _pin(cpu: int) -> Callable[[], None] | None:
    """Pin a process to one CPU (servers on one core, the client on the other) so the
    scheduler's noise does not swamp differences of a few percent. No-op where unsupported."""
    if not hasattr(os, "sched_setaffinity") or (os.cpu_count() or 1) < 2:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


@contextlib.contextmanager
def _subprocess_standins() -> Iterator[tuple[str, str]]:
    """Two stand-ins in their own processes (as Ollama would be), so the server's work does
    not compete with the client for this interpreter's GIL."""
    procs: list[subprocess.Popen[str]] = []
    urls: list[str] = []
    try:
        for name, extra in (("gpu", []), ("cpu", ["--gpu-fraction", "0"])):
            p = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "langchain_contextharbor.testing",
                    "--port",
                    "0",
                    "--name",
                    name,
                    "--model",
                    MODEL,
                    "--loaded",
                    MODEL,
                    *extra,
                ],
                stdout=subprocess.PIPE,
                text=True,
                preexec_fn=_pin(1),
            )
            procs.append(p)
            line = p.stdout.readline() if p.stdout else ""
            m = re.search(r"(http://\S+)", line)
            if not m:
                raise RuntimeError(f"stand-in {name} did not start: {line!r}")
            urls.append(m.group(1))
        yield urls[0], urls[1]
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)


def bench_overhead(calls: int) -> dict[str, Any]:
    """Per-call cost, paths interleaved call by call so machine drift hits all alike."""
    with _subprocess_standins() as (gpu_url, cpu_url):
        plain = ChatOllama(model=MODEL, base_url=gpu_url)
        fallbacks = plain.with_fallbacks([ChatOllama(model=MODEL, base_url=cpu_url)])
        hybrid = HybridChatOllama(
            model=MODEL,
            backends=[
                BackendConfig(name="gpu", base_url=gpu_url),
                BackendConfig(name="cpu", kind="cpu", base_url=cpu_url),
            ],
        )
        paths: dict[str, Callable[[], Any]] = {
            "ChatOllama.invoke": lambda: plain.invoke("hi"),
            "with_fallbacks.invoke": lambda: fallbacks.invoke("hi"),
            "HybridChatOllama.invoke": lambda: hybrid.invoke("hi"),
            "ChatOllama.stream": lambda: list(plain.stream("hi")),
            "HybridChatOllama.stream": lambda: list(hybrid.stream("hi")),
        }
        samples: dict[str, list[float]] = {k: [] for k in paths}
        pin = _pin(0)
        before = os.sched_getaffinity(0) if pin else None
        if pin:
            pin()
        for _ in range(50):  # warm up: connections, imports, caches
            for fn in paths.values():
                fn()
        for _ in range(calls):
            for name, fn in paths.items():
                t = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - t)
        hybrid.close()
        if before is not None:
            os.sched_setaffinity(0, before)
    med = {k: statistics.median(v) * 1000 for k, v in samples.items()}
    return {
        "calls": calls,
        "median_ms": {k: round(v, 3) for k, v in med.items()},
        "ratio_invoke": round(med["HybridChatOllama.invoke"] / med["ChatOllama.invoke"], 3),
        "ratio_stream": round(med["HybridChatOllama.stream"] / med["ChatOllama.stream"], 3),
        "ratio_with_fallbacks": round(med["with_fallbacks.invoke"] / med["ChatOllama.invoke"], 3),
    }


def bench_router_cpu(calls: int) -> dict[str, Any]:
    """The router's own CPU cost per call, with the HTTP layer replaced by canned chunks
    (the same stream for both models), so only the code around it differs."""
    parts = [
        {
            "model": MODEL,
            "created_at": "2025-01-01T00:00:00Z",
            "message": {"role": "assistant", "content": w},
            "done": False,
        }
        for w in ["Hello", " from", " gpu", " (llama3.2:1b).", " You", " said:", " hi"]
    ]
    final = {
        "model": MODEL,
        "created_at": "2025-01-01T00:00:00Z",
        "message": {"role": "assistant", "content": ""},
        "done": True,
        "done_reason": "stop",
        "prompt_eval_count": 1,
        "eval_count": 7,
    }

    def canned(self: ChatOllama, messages: Any, stop: Any = None, **kw: Any) -> Iterator[Any]:
        self._chat_params(messages, stop, **kw)
        yield from parts
        yield final

    original = ChatOllama._create_chat_stream
    ChatOllama._create_chat_stream = canned  # type: ignore[method-assign]
    try:
        plain = ChatOllama(model=MODEL)
        hybrid = HybridChatOllama(model=MODEL, background_probes=False)
        paths: dict[str, Callable[[], Any]] = {
            "plain invoke": lambda: plain.invoke("hi"),
            "hybrid invoke": lambda: hybrid.invoke("hi"),
            "plain stream": lambda: list(plain.stream("hi")),
            "hybrid stream": lambda: list(hybrid.stream("hi")),
        }
        samples: dict[str, list[float]] = {k: [] for k in paths}
        for _ in range(200):
            for fn in paths.values():
                fn()
        for _ in range(calls):
            for name, fn in paths.items():
                t = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - t)
        out = {k: statistics.median(v) * 1e6 for k, v in samples.items()}
    finally:
        ChatOllama._create_chat_stream = original  # type: ignore[method-assign]
    return {
        "median_us": {k: round(v, 1) for k, v in out.items()},
        "router_us_invoke": round(out["hybrid invoke"] - out["plain invoke"], 1),
        "router_us_stream": round(out["hybrid stream"] - out["plain stream"], 1),
    }


def bench_dead_gpu(gpu: OllamaStandIn, cpu: OllamaStandIn, calls: int) -> dict[str, Any]:
    fallbacks = ChatOllama(model=MODEL, base_url=gpu.url).with_fallbacks(
        [ChatOllama(model=MODEL, base_url=cpu.url)]
    )
    hybrid = _hybrid(gpu, cpu)
    plain_cpu = ChatOllama(model=MODEL, base_url=cpu.url)
    for fn in (lambda: hybrid.invoke("hi"), lambda: plain_cpu.invoke("hi")):
        for _ in range(20):
            fn()
    gpu.inject(Fault.REFUSE)
    try:
        first_t = time.perf_counter()
        hybrid.invoke("hi")  # pays for the refused GPU once, opens its breaker
        first = (time.perf_counter() - first_t) * 1000
        paths: dict[str, Callable[[], Any]] = {
            "plain ChatOllama on the CPU server": lambda: plain_cpu.invoke("hi"),
            "with_fallbacks, GPU refused": lambda: fallbacks.invoke("hi"),
            "HybridChatOllama, GPU refused": lambda: hybrid.invoke("hi"),
        }
        samples: dict[str, list[float]] = {k: [] for k in paths}
        for _ in range(calls):  # interleaved call by call
            for name, fn in paths.items():
                t = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - t)
        out = {k: statistics.median(v) * 1000 for k, v in samples.items()}
    finally:
        gpu.clear_faults()
        hybrid.close()
    return {
        "median_ms": {k: round(v, 3) for k, v in out.items()},
        "hybrid_first_call_ms": round(first, 3),
    }


def bench_hung_gpu(gpu: OllamaStandIn, cpu: OllamaStandIn, calls: int) -> dict[str, Any]:
    timeout = 1.0
    fallbacks = ChatOllama(
        model=MODEL, base_url=gpu.url, client_kwargs={"timeout": timeout}
    ).with_fallbacks([ChatOllama(model=MODEL, base_url=cpu.url)])
    hybrid = _hybrid(gpu, cpu, timeouts=Timeouts(first_token=timeout, idle=timeout))
    gpu.inject(Fault.HANG_BEFORE_FIRST_CHUNK)
    try:
        fb = [_median_ms(lambda: fallbacks.invoke("hi"), 1) for _ in range(3)]
        t = time.perf_counter()
        hybrid.invoke("hi")
        first = (time.perf_counter() - t) * 1000
        later = _median_ms(lambda: hybrid.invoke("hi"), calls)
    finally:
        gpu.clear_faults()
        hybrid.close()
    return {
        "timeout_s": timeout,
        "with_fallbacks_each_call_ms": round(statistics.median(fb), 1),
        "hybrid_first_call_ms": round(first, 1),
        "hybrid_later_calls_median_ms": round(later, 3),
    }


def bench_spillover(n: int, token_delay: float) -> dict[str, Any]:
    with (
        OllamaStandIn(name="gpu", loaded=[MODEL], token_delay=token_delay) as gpu,
        OllamaStandIn(name="cpu", loaded=[MODEL], gpu_fraction=0.0, token_delay=token_delay) as cpu,
    ):

        async def burst(model: HybridChatOllama) -> float:
            t = time.perf_counter()
            await asyncio.gather(*(model.ainvoke(f"q{i}") for i in range(n)))
            return time.perf_counter() - t

        off = _hybrid(gpu, cpu, spillover=False)
        on = _hybrid(gpu, cpu, spillover=True)
        t_off = asyncio.run(burst(off))
        t_on = asyncio.run(burst(on))
        used = on.stats()
        off.close()
        on.close()
    return {
        "concurrent_calls": n,
        "token_delay_s": token_delay,
        "spillover_off_s": round(t_off, 3),
        "spillover_on_s": round(t_on, 3),
        "speedup": round(t_off / t_on, 2),
        "served": {k: v["successes"] for k, v in used.items()},
    }


def bench_construction() -> dict[str, Any]:
    times = []
    for _ in range(20):
        t = time.perf_counter()
        HybridChatOllama(model=MODEL).close()
        times.append(time.perf_counter() - t)
    gc.collect()
    tracemalloc.start()
    m = HybridChatOllama(model=MODEL)
    size, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    t = time.perf_counter()
    m.backend_model("gpu")
    m.backend_model("cpu")
    inner_ms = (time.perf_counter() - t) * 1000
    m.close()
    return {
        "construct_ms_median": round(statistics.median(times) * 1000, 3),
        "construct_kib": round(size / 1024, 1),
        "inner_models_ms": round(inner_ms, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--out", default=str(Path(__file__).with_name("results.json")))
    args = ap.parse_args()
    results: dict[str, Any] = {
        "machine": f"{platform.machine()}, {platform.python_implementation()} "
        f"{platform.python_version()}",
    }
    results["overhead"] = bench_overhead(args.calls)
    results["router_cpu"] = bench_router_cpu(args.calls)
    with (
        OllamaStandIn(name="gpu", loaded=[MODEL]) as gpu,
        OllamaStandIn(name="cpu", loaded=[MODEL], gpu_fraction=0.0) as cpu,
    ):
        results["gpu_refused"] = bench_dead_gpu(gpu, cpu, args.calls)
        results["gpu_hung"] = bench_hung_gpu(gpu, cpu, 50)
    results["spillover"] = bench_spillover(8, 0.02)
    results["construction"] = bench_construction()
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    o = results["overhead"]
    print("| path | median ms |\n|---|---|")
    for k, v in o["median_ms"].items():
        print(f"| {k} | {v} |")
    print(
        f"\ninvoke ratio hybrid/plain: {o['ratio_invoke']}  stream: {o['ratio_stream']}  "
        f"with_fallbacks/plain: {o['ratio_with_fallbacks']}"
    )
    print(
        json.dumps(
            {k: results[k] for k in ("gpu_refused", "gpu_hung", "spillover", "construction")},
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
