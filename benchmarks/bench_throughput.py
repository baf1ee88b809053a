"""Figure 3: throughput with spill-over.

Two stand-ins in their own processes, ``num_parallel=1`` each (one generation at a time,
the rest queue), answering 8 chunks. Two speed settings: (a) equal speeds, (b) the GPU 20x
faster per token than the CPU. A burst of N concurrent ``ainvoke`` calls (8 and 32) is sent
through each policy and the wall time of the whole burst is measured:

- ``HybridChatOllama`` with its default policy (before it has measured a server it assumes
  the GPU is 10x faster per token: ``SpeedPrior``; the warm-up burst of 2 saturates the
  GPU, so the router measures the CPU with one background calibration request, which the
  warm-up waits for), and with an equal ``speed_prior``;
- GPU only (``HybridChatOllama`` with the GPU backend alone: everything queues there);
- static spill-over: plain ChatOllama clients with a fixed rule, "the GPU when its one slot
  is free, else the CPU" (what a hand-written spill-over does: it knows nothing of speeds);
- LiteLLM's Router, ``routing_strategy="least-busy"`` over both servers (the peer).

Run: ``python benchmarks/bench_throughput.py`` (part of ``make bench``). Writes
benchmarks/results/throughput.json and the ``throughput`` table of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from _bench import MODEL, X, litellm_version, machine, plot_bars, save, servers, update_doc
from langchain_ollama import ChatOllama

from langchain_contextharbor import BackendConfig, HybridChatOllama, SpeedPrior

#: Tells the router, before it has measured anything, that both servers are equally fast.
EQUAL = SpeedPrior(gpu_tokens_per_s=60.0, cpu_tokens_per_s=60.0, cpu_first_token_s=0.15)

#: One loop for every burst: the async clients keep connections bound to their loop.
LOOP = asyncio.new_event_loop()
SETTINGS = {"equal speeds": (0.02, 0.02), "GPU 20x faster per token": (0.001, 0.02)}


def burst(n: int, call: Callable[[int], Awaitable[str]]) -> tuple[float, Counter[str]]:
    async def go() -> tuple[float, Counter[str]]:
        t = time.perf_counter()
        served = await asyncio.gather(*(call(i) for i in range(n)))
        return time.perf_counter() - t, Counter(served)

    return LOOP.run_until_complete(go())


#: Every HybridChatOllama made, so a warm-up can wait for the background work it started.
MADE: list[HybridChatOllama] = []


def settle() -> None:
    """Wait for the speed calibrations a warm-up burst started (their futures, not a sleep)."""
    for m in MADE:
        for fut in list(m.router.calibration_futures.values()):
            fut.result(timeout=60)


def policies(gpu_url: str, cpu_url: str) -> dict[str, Callable[[], Callable[[int], Any]]]:
    def hybrid_default(**kw: Any) -> Callable[[int], Any]:
        m = HybridChatOllama(
            model=MODEL,
            backends=[
                BackendConfig(name="gpu", base_url=gpu_url),
                BackendConfig(name="cpu", kind="cpu", base_url=cpu_url),
            ],
            **kw,
        )
        MADE.append(m)

        async def call(i: int) -> str:
            r = await m.ainvoke(f"q{i}")
            return str(r.response_metadata.get("backend"))

        return call

    def gpu_only() -> Callable[[int], Any]:
        m = HybridChatOllama(model=MODEL, backends=[BackendConfig(name="gpu", base_url=gpu_url)])

        async def call(i: int) -> str:
            await m.ainvoke(f"q{i}")
            return "gpu"

        return call

    def static() -> Callable[[int], Any]:
        gpu, cpu = (
            ChatOllama(model=MODEL, base_url=gpu_url),
            ChatOllama(model=MODEL, base_url=cpu_url),
        )
        busy = [0]

        async def call(i: int) -> str:
            if busy[0] < 1:
                busy[0] += 1
                try:
                    await gpu.ainvoke(f"q{i}")
                finally:
                    busy[0] -= 1
                return "gpu"
            await cpu.ainvoke(f"q{i}")
            return "cpu"

        return call

    out = {
        "HybridChatOllama (default)": hybrid_default,
        "HybridChatOllama, equal speed_prior": lambda: hybrid_default(speed_prior=EQUAL),
        "GPU only": gpu_only,
        "static spill-over": static,
    }
    try:
        from litellm import Router
    except ImportError:
        return out

    def least_busy() -> Callable[[int], Any]:
        r = Router(
            model_list=[
                {
                    "model_name": "m",
                    "litellm_params": {"model": f"ollama_chat/{MODEL}", "api_base": u},
                }
                for u in (gpu_url, cpu_url)
            ],
            routing_strategy="least-busy",
            num_retries=0,
        )

        async def call(i: int) -> str:
            resp = await r.acompletion(model="m", messages=[{"role": "user", "content": f"q{i}"}])
            text = resp.choices[0].message.content or ""
            return "gpu" if "from gpu" in text else "cpu"

        return call

    out["LiteLLM Router (least-busy)"] = least_busy
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--sizes", type=int, nargs="+", default=[8, 32])
    args = ap.parse_args()
    meta: dict[str, Any] = {
        "machine": machine(),
        "runs": args.runs,
        "litellm": litellm_version(),
        "command": f"python benchmarks/bench_throughput.py --runs {args.runs}",
    }
    res: dict[str, Any] = {}
    for setting, (gpu_delay, cpu_delay) in SETTINGS.items():
        with servers(("gpu", 1.0, gpu_delay, 1), ("cpu", 0.0, cpu_delay, 1)) as (gpu, cpu):
            pols = policies(gpu.url, cpu.url)
            for n in args.sizes:
                row: dict[str, Any] = {}
                for name, make in pols.items():
                    call = make()
                    burst(2, call)  # warm: clients, probes
                    settle()  # and the speed calibration a saturated warm-up starts
                    walls, served = [], Counter[str]()
                    for _ in range(args.runs):
                        w, s = burst(n, call)
                        walls.append(w)
                        served = s
                    row[name] = {
                        "wall_s": round(statistics.median(walls), 3),
                        "range_s": [round(min(walls), 3), round(max(walls), 3)],
                        "served": dict(served),
                    }
                base = row["GPU only"]["wall_s"]
                for r in row.values():
                    r["speedup_vs_gpu_only"] = round(base / r["wall_s"], 2)
                res[f"{setting}, {n} concurrent"] = row
                print(setting, n, row)
    save("throughput", {**meta, "results": res})
    lines = [
        f"Measured {meta['machine']['date_utc']} UTC; wall time of the whole burst, median of "
        f"{args.runs} runs; 8 chunks per answer at 20 ms per chunk (the fast GPU: 1 ms).",
        "",
        "| setting | policy | wall time | vs GPU only | served (gpu/cpu) |",
        "|---|---|---|---|---|",
    ]
    for setting, row in res.items():
        for name, r in row.items():
            s = r["served"]
            lines.append(
                f"| {setting} | {name} | {r['wall_s']:.2f} s | {r['speedup_vs_gpu_only']:.2f}{X} | "
                f"{s.get('gpu', 0)}/{s.get('cpu', 0)} |"
            )
    img = plot_bars(
        "throughput",
        {k: {p: r["wall_s"] for p, r in row.items()} for k, row in res.items()},
        title="burst wall time (lower is better)",
        ylabel="seconds",
    )
    if img:
        lines.append(f"\n![burst wall time per policy]({img})")
    md = "\n".join(lines)
    update_doc("throughput", md)
    print(md)


if __name__ == "__main__":
    main()
