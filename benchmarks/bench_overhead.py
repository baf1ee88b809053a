"""Figure 1 (and the peer's half of figure 6): what a call costs through HybridChatOllama
against plain ChatOllama on the same healthy server, beside ChatOllama.with_fallbacks,
LiteLLM's Router and ChatLiteLLMRouter.

Run: ``python benchmarks/bench_overhead.py [--calls 200 --runs 5]`` (part of ``make bench``).
Servers run in their own processes pinned to core 1, the client on core 0; paths alternate
in blocks of 10 calls; every ratio is taken within one run, and the range over runs is
reported. Also measured: the router's own CPU time per call, with the HTTP layer replaced by
canned chunks (the same stream for both models), so only the code around it differs.
Writes benchmarks/results/overhead.json and the ``overhead`` table of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

from _bench import (
    MODEL,
    fmt_ratio,
    interleave,
    litellm_version,
    machine,
    peer,
    pin_client,
    run_async,
    save,
    servers,
    spread,
    summary_ms,
    update_doc,
)
from langchain_ollama import ChatOllama

from langchain_contextharbor import BackendConfig, HybridChatOllama

BASE = "ChatOllama"


def measure(calls: int, runs: int) -> dict[str, Any]:
    with servers(("gpu", 1.0, 0.0, 4), ("cpu", 0.0, 0.0, 4)) as (gpu, cpu):
        pin_client()
        plain = ChatOllama(model=MODEL, base_url=gpu.url)
        fallbacks = plain.with_fallbacks([ChatOllama(model=MODEL, base_url=cpu.url)])
        hybrid = HybridChatOllama(
            model=MODEL,
            backends=[
                BackendConfig(name="gpu", base_url=gpu.url),
                BackendConfig(name="cpu", kind="cpu", base_url=cpu.url),
            ],
        )
        router, lc_router, why = peer({"gpu": gpu.url, "cpu": cpu.url})
        loop = asyncio.new_event_loop()
        ttft: dict[str, list[float]] = {}

        def streamer(name: str, model: Any) -> Callable[[], None]:
            def go() -> None:
                t = time.perf_counter()
                first = None
                for c in model.stream("hi"):
                    if first is None and c.content:
                        first = time.perf_counter() - t
                ttft.setdefault(name, []).append(first if first is not None else float("nan"))

            return go

        def astreamer(model: Any) -> Callable[[], Any]:
            async def go() -> None:
                async for _ in model.astream("hi"):
                    pass

            return run_async(loop, go)

        paths: dict[str, Callable[[], Any]] = {
            "ChatOllama.invoke": lambda: plain.invoke("hi"),
            "HybridChatOllama.invoke": lambda: hybrid.invoke("hi"),
            "with_fallbacks.invoke": lambda: fallbacks.invoke("hi"),
            "ChatOllama.stream": streamer("ChatOllama.stream", plain),
            "HybridChatOllama.stream": streamer("HybridChatOllama.stream", hybrid),
            "ChatOllama.ainvoke": run_async(loop, lambda: plain.ainvoke("hi")),
            "HybridChatOllama.ainvoke": run_async(loop, lambda: hybrid.ainvoke("hi")),
            "ChatOllama.astream": astreamer(plain),
            "HybridChatOllama.astream": astreamer(hybrid),
        }
        if router is not None:
            msgs = [{"role": "user", "content": "hi"}]
            paths["LiteLLM Router.completion"] = lambda: router.completion(
                model="gpu", messages=msgs
            )
            paths["ChatLiteLLMRouter.invoke"] = lambda: lc_router.invoke("hi")
        per_run: list[dict[str, Any]] = []
        for _ in range(runs):
            ttft.clear()
            ttft.update({k: [] for k in ("ChatOllama.stream", "HybridChatOllama.stream")})
            samples = interleave(paths, calls, block=10)
            run = {k: summary_ms(v) for k, v in samples.items()}
            for k, v in samples.items():
                base = samples[base_of(k)]
                # Paired blocks: each block of this path against the baseline's block run
                # just before or after it, so drift between blocks cancels out.
                ratios = [
                    statistics.median(v[i : i + 10]) / statistics.median(base[i : i + 10])
                    for i in range(0, len(v), 10)
                ]
                run[k]["paired_ratio"] = round(statistics.median(ratios), 4)
            for k, v in ttft.items():
                run[k]["ttft_median_ms"] = round(statistics.median(v[-calls:]) * 1000, 3)
                run[k]["ttft_p95_ms"] = round(sorted(v[-calls:])[int(0.95 * calls)] * 1000, 3)
            per_run.append(run)
        hybrid.close()
        loop.close()
    return {"per_run": per_run, "peer_skipped": why}


def base_of(path: str) -> str:
    """The plain ChatOllama path a path is compared with."""
    if path.startswith(("LiteLLM", "ChatLiteLLM", "with_")):
        return "ChatOllama.invoke"
    return BASE + "." + path.split(".", 1)[1]


def summarize(data: dict[str, Any]) -> dict[str, Any]:
    runs = data["per_run"]
    out: dict[str, Any] = {}
    for path in runs[0]:
        base = base_of(path)
        row: dict[str, Any] = {
            "median_ms": spread([r[path]["median_ms"] for r in runs]),
            "p95_ms": spread([r[path]["p95_ms"] for r in runs]),
        }
        if path != base:
            row["ratio_median"] = spread([r[path]["paired_ratio"] for r in runs])
            row["ratio_of_run_medians"] = spread(
                [r[path]["median_ms"] / r[base]["median_ms"] for r in runs]
            )
            row["ratio_p95"] = spread([r[path]["p95_ms"] / r[base]["p95_ms"] for r in runs])
        if "ttft_median_ms" in runs[0][path]:
            row["ttft_median_ms"] = spread([r[path]["ttft_median_ms"] for r in runs])
            if path != base:
                row["ratio_ttft"] = spread(
                    [r[path]["ttft_median_ms"] / r[base]["ttft_median_ms"] for r in runs]
                )
        out[path] = row
    return out


def bench_router_cpu(calls: int) -> dict[str, Any]:
    """The router's own CPU cost per call on canned chunks (no HTTP)."""
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
        samples = interleave(paths, calls, warmup=200)
        us = {k: statistics.median(v) * 1e6 for k, v in samples.items()}
    finally:
        ChatOllama._create_chat_stream = original  # type: ignore[method-assign]
    return {
        "median_us": {k: round(v, 1) for k, v in us.items()},
        "router_us_invoke": round(us["hybrid invoke"] - us["plain invoke"], 1),
        "router_us_stream": round(us["hybrid stream"] - us["plain stream"], 1),
    }


def table(summary: dict[str, Any], cpu: dict[str, Any], meta: dict[str, Any]) -> str:
    lines = [
        f"Measured {meta['machine']['date_utc']} UTC, {meta['calls']} calls per path and run, "
        f"{meta['runs']} runs. Ratio (median): the median over paired blocks of 10 calls of "
        "this path's block median over plain ChatOllama's adjacent block, then the median and "
        "the range over runs; p95 ratios compare each run's p95s.",
        "",
        "| path | median | p95 | ratio (median) | ratio (p95) | stream: first token |",
        "|---|---|---|---|---|---|",
    ]
    for path, row in summary.items():
        ratio = fmt_ratio(row["ratio_median"]) if "ratio_median" in row else "1 (baseline)"
        r95 = fmt_ratio(row["ratio_p95"]) if "ratio_p95" in row else "1 (baseline)"
        first = ""
        if "ttft_median_ms" in row:
            first = f"{row['ttft_median_ms']['median']:.3f} ms"
            if "ratio_ttft" in row:
                first += f", {fmt_ratio(row['ratio_ttft'])}"
        lines.append(
            f"| `{path}` | {row['median_ms']['median']:.3f} ms | {row['p95_ms']['median']:.3f} ms"
            f" | {ratio} | {r95} | {first} |"
        )
    if meta.get("peer_skipped"):
        lines.append(f"\nLiteLLM not measured: {meta['peer_skipped']}.")
    lines.append(
        f"\nRouter CPU time per call on canned chunks (no HTTP): {cpu['router_us_invoke']} µs "
        f"(invoke), {cpu['router_us_stream']} µs (stream)."
    )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    meta: dict[str, Any] = {
        "machine": machine(),
        "calls": args.calls,
        "runs": args.runs,
        "litellm": litellm_version(),
        "command": f"python benchmarks/bench_overhead.py --calls {args.calls} --runs {args.runs}",
    }
    data = measure(args.calls, args.runs)
    meta["peer_skipped"] = data["peer_skipped"]
    summary = summarize(data)
    cpu = bench_router_cpu(max(500, args.calls))
    save("overhead", {**meta, "summary": summary, "router_cpu": cpu, "per_run": data["per_run"]})
    md = table(summary, cpu, meta)
    update_doc("overhead", md)
    print(md)


if __name__ == "__main__":
    main()
