"""Figure 2 (and the peer's failover half of figure 6): what failover costs over time.

For each way a GPU server dies, each client makes ``--healthy`` calls on healthy servers,
then the GPU fails and it makes ``--after`` more; the latency of every call is recorded
(plot: latency per call vs call number). Every client gets the same client timeout
(``--timeout``, also the connect timeout):

- HybridChatOllama (``Timeouts(connect=T, first_token=T, idle=T)``);
- ChatOllama(gpu).with_fallbacks([ChatOllama(cpu)]) with ``client_kwargs={"timeout": T}``;
- LiteLLM's Router, GPU deployment with the CPU as its fallback, ``timeout=T``, and
  ChatLiteLLMRouter (langchain-litellm) around such a Router.

Scenarios: the GPU port refuses; the GPU hangs before its first token, "warm" (the clients
made healthy calls first) and "cold" (the fault is there from the first call of a new
client), both also with a first-token deadline long enough for a cold load (5 s) plus the
adaptive warm deadline (HybridChatOllama only: ``warm_first_token_timeout=T``, which applies
while the model is known to be loaded); the GPU is blackholed (a loopback listener with a
full accept backlog: connects never complete); the GPU process is SIGKILLed while a stream
is running (stream calls).

Run: ``python benchmarks/bench_failover.py`` (part of ``make bench``). Servers run in their
own processes. Writes benchmarks/results/failover.json, docs/img/failover.png and the
``failover`` table of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

from _bench import (
    MODEL,
    Blackhole,
    StandInProcess,
    litellm_version,
    machine,
    peer,
    plot_lines,
    save,
    servers,
    update_doc,
)
from langchain_ollama import ChatOllama

from langchain_contextharbor import BackendConfig, HybridChatOllama, Timeouts

SCENARIOS = (
    "refused",
    "hung_warm",
    "hung_cold",
    "hung_warm_adaptive",
    "hung_cold_adaptive",
    "blackholed",
    "killed_mid_stream",
)
#: HybridChatOllama only: a first-token deadline long enough for a cold model load
#: (``--long-first-token``) with the adaptive warm deadline (``warm_first_token_timeout`` =
#: the client timeout) that applies while the model is known to be loaded.
ADAPTIVE = ("hung_warm_adaptive", "hung_cold_adaptive")
TITLES = {
    "refused": "GPU port refused",
    "hung_warm": "GPU hangs before the first token (warm client)",
    "hung_cold": "GPU hangs before the first token (cold client)",
    "hung_warm_adaptive": "GPU hangs, warm client, long cold deadline + adaptive warm one",
    "hung_cold_adaptive": "GPU hangs, cold client, long cold deadline + adaptive warm one",
    "blackholed": "GPU blackholed (connect never completes)",
    "killed_mid_stream": "GPU killed mid-stream (stream calls)",
}


def clients(
    gpu: StandInProcess, cpu: StandInProcess, t: float, scenario: str, long_first_token: float
) -> dict[str, Callable[[], Any]]:
    """Fresh clients (nothing learned yet), as name -> factory of a call function."""
    if scenario in ADAPTIVE:
        slow = Timeouts(connect=t, first_token=long_first_token, idle=t)

        def adaptive() -> Any:
            return HybridChatOllama(
                model=MODEL,
                backends=[
                    BackendConfig(name="gpu", base_url=gpu.url, timeouts=slow),
                    BackendConfig(name="cpu", kind="cpu", base_url=cpu.url, timeouts=slow),
                ],
                warm_first_token_timeout=t,
            )

        return {"HybridChatOllama": adaptive}

    def hybrid() -> Any:
        return HybridChatOllama(
            model=MODEL,
            backends=[
                BackendConfig(
                    name="gpu",
                    base_url=gpu.url,
                    timeouts=Timeouts(connect=t, first_token=t, idle=t),
                ),
                BackendConfig(
                    name="cpu",
                    kind="cpu",
                    base_url=cpu.url,
                    timeouts=Timeouts(connect=t, first_token=t, idle=t),
                ),
            ],
        )

    def fallbacks() -> Any:
        kw = {"client_kwargs": {"timeout": t}}
        return ChatOllama(model=MODEL, base_url=gpu.url, **kw).with_fallbacks(
            [ChatOllama(model=MODEL, base_url=cpu.url, **kw)]
        )

    out: dict[str, Callable[[], Any]] = {
        "HybridChatOllama": hybrid,
        "with_fallbacks": fallbacks,
    }
    router, _lc, _why = peer({"gpu": gpu.url, "cpu": cpu.url})
    if router is not None:

        def litellm() -> Any:
            r, _, _ = peer({"gpu": gpu.url, "cpu": cpu.url}, timeout=t)
            return r

        def chat_litellm() -> Any:
            _, lc, _ = peer({"gpu": gpu.url, "cpu": cpu.url}, timeout=t)
            return lc

        out["LiteLLM Router"] = litellm
        out["ChatLiteLLMRouter"] = chat_litellm
    return out


def one_call(client: Any, stream: bool) -> tuple[float, str]:
    t0 = time.perf_counter()
    outcome = "ok"
    try:
        if hasattr(client, "completion"):  # LiteLLM Router
            msgs = [{"role": "user", "content": "hi"}]
            if stream:
                for _ in client.completion(model="gpu", messages=msgs, stream=True):
                    pass
            else:
                client.completion(model="gpu", messages=msgs)
        elif stream:
            for _ in client.stream("hi"):
                pass
        else:
            client.invoke("hi")
    except Exception as exc:
        outcome = type(exc).__name__
    return (time.perf_counter() - t0) * 1000, outcome


def run_scenario(
    scenario: str, name: str, factory: Callable[[], Any], gpu: StandInProcess, args: Any
) -> dict[str, Any]:
    stream = scenario == "killed_mid_stream"
    client = factory()
    lat: list[float] = []
    outcomes: list[str] = []
    healthy = 0 if scenario.startswith("hung_cold") else args.healthy
    for _ in range(healthy):
        ms, o = one_call(client, stream)
        lat.append(ms)
        outcomes.append(o)
    hole: Blackhole | None = None
    timer: threading.Timer | None = None
    if scenario == "refused":
        gpu.command(op="inject", fault="refuse")
    elif scenario.startswith("hung"):
        gpu.command(op="inject", fault="hang_before_first_chunk")
    elif scenario == "blackholed":
        gpu.kill()
        hole = Blackhole(gpu.port)
    elif scenario == "killed_mid_stream":
        timer = threading.Timer(args.kill_after, gpu.kill)
        timer.start()
    try:
        for _ in range(args.after):
            ms, o = one_call(client, stream)
            lat.append(ms)
            outcomes.append(o)
    finally:
        if timer is not None:
            timer.join()
        if hole is not None:
            hole.close()
        if gpu.alive:
            gpu.command(op="clear")
        else:
            gpu.start()
        if hasattr(client, "close"):
            client.close()
    later = lat[healthy + 2 :]
    return {
        "latency_ms": [round(x, 3) for x in lat],
        "outcomes": outcomes,
        "fault_from_call": healthy + 1,
        "first_failure_call_ms": round(lat[healthy], 1),
        "later_calls_median_ms": round(statistics.median(later), 3) if later else None,
        "errors": sum(o != "ok" for o in outcomes),
        "error_types": sorted({o for o in outcomes if o != "ok"}),
    }


def table(res: dict[str, Any], meta: dict[str, Any]) -> str:
    lines = [
        f"Measured {meta['machine']['date_utc']} UTC; client timeout {meta['timeout_s']} s for "
        f"every client; {meta['healthy']} healthy calls, then {meta['after']} calls with the "
        "GPU failed (a cold client meets the fault on its first call).",
        "",
        "| scenario | client | first call after the failure | later calls (median) | "
        "calls that raised |",
        "|---|---|---|---|---|",
    ]
    for sc, per in res.items():
        for name, r in per.items():
            errs = f"{r['errors']} ({', '.join(r['error_types'])})" if r["errors"] else "0"
            later = r["later_calls_median_ms"]
            lines.append(
                f"| {TITLES[sc]} | {name} | {r['first_failure_call_ms']:.1f} ms | "
                f"{later:.1f} ms | {errs} |"
            )
    if meta.get("image"):
        lines.append(
            f"\n![latency per call, each scenario; dotted line: the GPU fails; crosses: calls "
            f"that raised]({meta['image']})"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--timeout", type=float, default=0.5)
    ap.add_argument("--healthy", type=int, default=5)
    ap.add_argument("--after", type=int, default=15)
    ap.add_argument("--kill-after", type=float, default=0.05)
    ap.add_argument("--long-first-token", type=float, default=5.0)
    ap.add_argument("--only", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    ap.add_argument("--token-delay", type=float, default=0.02)
    args = ap.parse_args()
    meta: dict[str, Any] = {
        "machine": machine(),
        "timeout_s": args.timeout,
        "healthy": args.healthy,
        "after": args.after,
        "litellm": litellm_version(),
        "command": "python benchmarks/bench_failover.py "
        f"--timeout {args.timeout} --healthy {args.healthy} --after {args.after}",
    }
    res: dict[str, dict[str, Any]] = {}
    for sc in args.only:
        # Killing mid-stream needs streams that last (8 chunks x token_delay); the other
        # scenarios run on instant servers so the cost of the failure itself shows.
        delay = args.token_delay if sc == "killed_mid_stream" else 0.0
        with servers(("gpu", 1.0, delay, 4), ("cpu", 0.0, delay, 4)) as (gpu, cpu):
            res[sc] = {}
            made = clients(gpu, cpu, args.timeout, sc, args.long_first_token)
            for name, factory in made.items():
                res[sc][name] = run_scenario(sc, name, factory, gpu, args)
                print(f"{sc:18s} {name:18s} {res[sc][name]['latency_ms']}")
    panels = {TITLES[sc]: {n: r["latency_ms"] for n, r in per.items()} for sc, per in res.items()}
    meta["image"] = plot_lines(
        "failover",
        {},
        title="failover",
        xlabel="call number",
        ylabel="latency (ms, log)",
        logy=True,
        panels=panels,
        vline={TITLES[sc]: next(iter(per.values()))["fault_from_call"] for sc, per in res.items()},
        errors={
            TITLES[sc]: {
                n: [i + 1 for i, o in enumerate(r["outcomes"]) if o != "ok"] for n, r in per.items()
            }
            for sc, per in res.items()
        },
    )
    save("failover", {**meta, "scenarios": res})
    md = table(res, meta)
    update_doc("failover", md)
    print(md)


if __name__ == "__main__":
    main()
