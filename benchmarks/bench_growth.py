"""Figure 5: how the cost grows: with the number of backends, with the message history,
and what importing and constructing costs (time and memory) against langchain_ollama.

- per-call overhead with 2, 4 and 8 backends (the GPU serves; the others are configured,
  probed and planned over), against plain ChatOllama on the same server, interleaved;
- per-call overhead with histories of 1, 20 and 200 messages, against plain ChatOllama
  on the same history;
- import time of ``langchain_ollama``, ``langchain_contextharbor`` (which imports
  langchain_ollama) and ``litellm``, each in fresh interpreters (median of 5);
- construction time and traced memory per instance of ChatOllama and HybridChatOllama,
  before and after the first call (which builds the inner clients).

Run: ``python benchmarks/bench_growth.py`` (part of ``make bench``). Servers run in their own
processes. Writes benchmarks/results/growth.json and the ``growth`` table of
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from _bench import (
    DASH,
    MODEL,
    ROOT,
    X,
    interleave,
    machine,
    pin_client,
    save,
    servers,
    spread,
    update_doc,
)
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_ollama import ChatOllama

from langchain_contextharbor import BackendConfig, HybridChatOllama


def history(n: int) -> list[BaseMessage]:
    msgs: list[BaseMessage] = [SystemMessage("You are terse.")]
    for i in range(n - 1):
        msgs.append(HumanMessage(f"question {i}") if i % 2 == 0 else AIMessage(f"answer {i}"))
    msgs.append(HumanMessage("last question"))
    return msgs[-n:] if n > 1 else [HumanMessage("hi")]


def ratio_runs(paths: dict[str, Callable[[], Any]], calls: int, runs: int) -> dict[str, Any]:
    ratios = []
    base = ms = 0.0
    for _ in range(runs):
        s = interleave(paths, calls)
        base = statistics.median(s["plain"]) * 1000
        ms = statistics.median(s["hybrid"]) * 1000
        ratios.append(ms / base)
    return {"plain_ms": round(base, 3), "hybrid_ms": round(ms, 3), "ratio": spread(ratios)}


def backends_growth(calls: int, runs: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    specs = [("gpu", 1.0, 0.0, 4)] + [(f"cpu{i}", 0.0, 0.0, 4) for i in range(7)]
    with servers(*specs) as procs:
        pin_client()
        plain = ChatOllama(model=MODEL, base_url=procs[0].url)
        for n in (2, 4, 8):
            cfgs = [BackendConfig(name="gpu", base_url=procs[0].url)] + [
                BackendConfig(name=p.name, kind="cpu", base_url=p.url) for p in procs[1:n]
            ]
            hybrid = HybridChatOllama(model=MODEL, backends=cfgs)
            plan_ts = []
            for _ in range(2000):
                t = time.perf_counter()
                hybrid.select_backend()
                plan_ts.append(time.perf_counter() - t)
            out[str(n)] = ratio_runs(
                {"plain": lambda: plain.invoke("hi"), "hybrid": lambda h=hybrid: h.invoke("hi")},
                calls,
                runs,
            )
            out[str(n)]["plan_us"] = round(statistics.median(plan_ts[200:]) * 1e6, 1)
            hybrid.close()
            print("backends", n, out[str(n)])
    return out


def history_growth(calls: int, runs: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with servers(("gpu", 1.0, 0.0, 4), ("cpu", 0.0, 0.0, 4)) as (gpu, cpu):
        pin_client()
        plain = ChatOllama(model=MODEL, base_url=gpu.url)
        hybrid = HybridChatOllama(
            model=MODEL,
            backends=[
                BackendConfig(name="gpu", base_url=gpu.url),
                BackendConfig(name="cpu", kind="cpu", base_url=cpu.url),
            ],
        )
        for n in (1, 20, 200):
            msgs = history(n)
            out[str(n)] = ratio_runs(
                {
                    "plain": lambda m=msgs: plain.invoke(m),
                    "hybrid": lambda m=msgs: hybrid.invoke(m),
                },
                calls,
                runs,
            )
            print("history", n, out[str(n)])
        hybrid.close()
    return out


def import_times(repeat: int = 5) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), LITELLM_LOCAL_MODEL_COST_MAP="True")
    out: dict[str, Any] = {}
    for mod in ("langchain_ollama", "langchain_contextharbor", "litellm"):
        code = f"import time; t = time.perf_counter(); import {mod}; print(time.perf_counter() - t)"
        ts = []
        for _ in range(repeat):
            r = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
            )
            if r.returncode != 0:
                break
            ts.append(float(r.stdout.strip().splitlines()[-1]))
        out[mod] = (
            {"median_s": round(statistics.median(ts), 3)} if ts else {"error": "not installed"}
        )
    base = out["langchain_ollama"]["median_s"]
    for v in out.values():
        if "median_s" in v:
            v["ratio"] = round(v["median_s"] / base, 2)
    return out


def construction() -> dict[str, Any]:
    with servers(("gpu", 1.0, 0.0, 4), ("cpu", 0.0, 0.0, 4)) as (gpu, cpu):
        makers: dict[str, Callable[[], Any]] = {
            "ChatOllama": lambda: ChatOllama(model=MODEL, base_url=gpu.url),
            "HybridChatOllama": lambda: HybridChatOllama(
                model=MODEL,
                backends=[
                    BackendConfig(name="gpu", base_url=gpu.url),
                    BackendConfig(name="cpu", kind="cpu", base_url=cpu.url),
                ],
            ),
        }
        out: dict[str, Any] = {}
        for name, make in makers.items():
            for _ in range(5):
                make()
            times = []
            for _ in range(50):
                t = time.perf_counter()
                make()
                times.append(time.perf_counter() - t)
            gc.collect()
            tracemalloc.start()
            m = make()
            built, _ = tracemalloc.get_traced_memory()
            m.invoke("hi")
            time.sleep(0.3)  # background prebuild of the other inner client
            used, _ = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            if hasattr(m, "close"):
                m.close()
            out[name] = {
                "construct_ms_median": round(statistics.median(times) * 1000, 3),
                "kib_constructed": round(built / 1024, 1),
                "kib_after_first_call": round(used / 1024, 1),
            }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    meta: dict[str, Any] = {
        "machine": machine(),
        "calls": args.calls,
        "runs": args.runs,
        "command": f"python benchmarks/bench_growth.py --calls {args.calls} --runs {args.runs}",
    }
    res = {
        "backends": backends_growth(args.calls, args.runs),
        "history": history_growth(args.calls, args.runs),
        "imports": import_times(),
        "construction": construction(),
    }
    save("growth", {**meta, **res})

    def r(x: dict[str, Any]) -> str:
        s = x["ratio"]
        return f"{s['median']:.2f}{X} ({s['min']:.2f}{DASH}{s['max']:.2f})"

    lines = [
        f"Measured {meta['machine']['date_utc']} UTC; {args.calls} interleaved calls per path "
        f"and run, {args.runs} runs; ratio = HybridChatOllama / plain ChatOllama (median, "
        "range over runs).",
        "",
        "| what | plain ChatOllama | HybridChatOllama | ratio |",
        "|---|---|---|---|",
    ]
    for n, x in res["backends"].items():
        lines.append(
            f"| {n} backends, invoke (planning: {x['plan_us']:.1f} µs) | {x['plain_ms']:.3f} ms"
            f" | {x['hybrid_ms']:.3f} ms | {r(x)} |"
        )
    for n, x in res["history"].items():
        lines.append(
            f"| history of {n} message(s), invoke | {x['plain_ms']:.3f} ms | "
            f"{x['hybrid_ms']:.3f} ms | {r(x)} |"
        )
    imp = res["imports"]
    lines += [
        "",
        "| import (fresh interpreter, median of 5) | time | vs langchain_ollama |",
        "|---|---|---|",
    ]
    for mod, v in imp.items():
        if "median_s" in v:
            lines.append(f"| `import {mod}` | {v['median_s']:.2f} s | {v['ratio']:.2f}{X} |")
        else:
            lines.append(f"| `import {mod}` | {v['error']} | |")
    c = res["construction"]
    lines += [
        "",
        "| instance | construction (median) | memory constructed | memory after first call |",
        "|---|---|---|---|",
    ]
    for name, v in c.items():
        lines.append(
            f"| `{name}` | {v['construct_ms_median']:.3f} ms | {v['kib_constructed']:.1f} KiB | "
            f"{v['kib_after_first_call']:.1f} KiB |"
        )
    md = "\n".join(lines)
    update_doc("growth", md)
    print(md)


if __name__ == "__main__":
    main()
