"""Benchmarks behind the figures in docs/benchmarks.md.

Run: ``make bench`` (or ``.venv/bin/python benchmarks/bench_overhead.py [--calls N]``).
Everything runs against Ollama stand-ins on loopback, sharing this machine's cores, so
compare ratios, not absolute milliseconds. Writes ``benchmarks/results.json`` and prints a
Markdown table.

Measured:
1. per-call cost of HybridChatOllama vs plain ChatOllama vs ChatOllama.with_fallbacks
   (invoke and stream, interleaved rounds, medians);
2. cost of every call once the GPU server refuses connections;
3. cost of every call once the GPU server hangs before its first token;
4. throughput of N concurrent calls with spill-over on vs off (num_parallel=1 servers);
5. construction time and memory of one HybridChatOllama.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import platform
import statistics
import time
import tracemalloc
from collections.abc import Callable
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


def bench_overhead(
    gpu: OllamaStandIn, cpu: OllamaStandIn, calls: int, rounds: int
) -> dict[str, Any]:
    plain = ChatOllama(model=MODEL, base_url=gpu.url)
    fallbacks = plain.with_fallbacks([ChatOllama(model=MODEL, base_url=cpu.url)])
    hybrid = _hybrid(gpu, cpu)
    paths: dict[str, Callable[[], Any]] = {
        "ChatOllama.invoke": lambda: plain.invoke("hi"),
        "with_fallbacks.invoke": lambda: fallbacks.invoke("hi"),
        "HybridChatOllama.invoke": lambda: hybrid.invoke("hi"),
        "ChatOllama.stream": lambda: list(plain.stream("hi")),
        "HybridChatOllama.stream": lambda: list(hybrid.stream("hi")),
    }
    for fn in paths.values():  # warm up: connections, imports, caches
        for _ in range(30):
            fn()
    per_round: dict[str, list[float]] = {k: [] for k in paths}
    for _ in range(rounds):  # interleave so drift hits every path alike
        for name, fn in paths.items():
            per_round[name].append(_median_ms(fn, calls))
    med = {k: statistics.median(v) for k, v in per_round.items()}
    hybrid.close()
    return {
        "calls_per_round": calls,
        "rounds": rounds,
        "median_ms": {k: round(v, 3) for k, v in med.items()},
        "ratio_invoke": round(med["HybridChatOllama.invoke"] / med["ChatOllama.invoke"], 3),
        "ratio_stream": round(med["HybridChatOllama.stream"] / med["ChatOllama.stream"], 3),
        "ratio_with_fallbacks": round(med["with_fallbacks.invoke"] / med["ChatOllama.invoke"], 3),
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
        out = {
            "plain ChatOllama on the CPU server": _median_ms(lambda: plain_cpu.invoke("hi"), calls),
            "with_fallbacks, GPU refused": _median_ms(lambda: fallbacks.invoke("hi"), calls),
            "HybridChatOllama, GPU refused": _median_ms(lambda: hybrid.invoke("hi"), calls),
        }
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
    gc.collect()
    tracemalloc.start()
    t = time.perf_counter()
    m = HybridChatOllama(model=MODEL)
    ms = (time.perf_counter() - t) * 1000
    size, _peak = tracemalloc.get_traced_memory()
    t = time.perf_counter()
    m.inner_models  # noqa: B018 - builds one ChatOllama per backend
    inner_ms = (time.perf_counter() - t) * 1000
    size2, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "construct_ms": round(ms, 3),
        "construct_kib": round(size / 1024, 1),
        "inner_models_ms": round(inner_ms, 1),
        "with_inner_models_kib": round(size2 / 1024, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default=str(Path(__file__).with_name("results.json")))
    args = ap.parse_args()
    results: dict[str, Any] = {
        "machine": f"{platform.machine()}, {platform.python_implementation()} "
        f"{platform.python_version()}",
    }
    with (
        OllamaStandIn(name="gpu", loaded=[MODEL]) as gpu,
        OllamaStandIn(name="cpu", loaded=[MODEL], gpu_fraction=0.0) as cpu,
    ):
        results["overhead"] = bench_overhead(gpu, cpu, args.calls, args.rounds)
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
