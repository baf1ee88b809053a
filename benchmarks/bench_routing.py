"""Routing judgement benchmark: the situations of issue 8, servers in their own processes.

Run: ``.venv/bin/python benchmarks/bench_routing.py [RUNS]`` (about two minutes; RUNS:
fresh processes per first-call figure, default 7). Writes ``benchmarks/bench_routing.json``
and prints the table of docs/benchmarks.md (``--markdown`` re-prints the last run's).

Every stand-in runs in a subprocess (as Ollama would), one generation slot each, on
loopback. Scenarios:

(a) GPU twenty times faster per token than the CPU: batches of 6 and 16 with the default
    policy vs GPU only (``spillover=False``) vs static spill-over (equal speeds assumed, so
    a saturated GPU passes calls to the free CPU as before this work);
(b) equal speeds: the same batches, the default vs GPU only (the spill-over gain);
(c) a hung warm GPU (``/api/ps`` lists the model; chat never answers): the first call's
    time with default timeouts, and the slowest later call;
(d) a first call on a fresh instance with the model only on the CPU server: requests that
    reached the GPU's ``/api/chat``.

Plus, in the same run: a fresh process's first call vs ChatOllama's construction + first
call, a call from a new event loop (``asyncio.run`` per call) vs within one loop, and RSS
and threads per used instance. For the default policy, (a) and (b) report both the first
batch of a fresh instance (speeds still the prior's) and the same instance's next batch of
the same size ("learned": after the first batch and the speed calibration it started, if
any, have ended: real calls measured the GPU, a calibration request the CPU).

Writes ``benchmarks/bench_routing.json`` and its table between the ``bench:routing``
markers of docs/benchmarks.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from langchain_contextharbor import (
    BackendConfig,
    BreakerPolicy,
    HybridChatOllama,
    SpeedPrior,
    Timeouts,
)

MODEL = "llama3.2:1b"
ROOT = Path(__file__).resolve().parents[1]

_SERVER = textwrap.dedent(
    """
    import sys, json
    from langchain_contextharbor.testing import Fault, OllamaStandIn
    kw = json.loads(sys.argv[1])
    fault = kw.pop("fault", None)
    srv = OllamaStandIn(**kw).start()
    if fault:
        srv.inject(Fault(fault))
    print(srv.url, flush=True)
    for line in sys.stdin:
        cmd, _, arg = line.strip().partition(" ")
        if cmd == "count":
            print(len(srv.requests_to(arg)), flush=True)
        elif cmd == "clear":
            srv.clear_faults()
            print("ok", flush=True)
        else:
            break
    srv.stop()
    """
)


class Server:
    """One stand-in in its own process; ``count(path)`` asks it how many requests it saw."""

    def __init__(self, **kw: Any) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER, json.dumps(kw)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("http"):
            raise RuntimeError(f"stand-in did not start: {self.url!r}")

    def _ask(self, line: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def count(self, path: str) -> int:
        return int(self._ask(f"count {path}"))

    def clear(self) -> None:
        self._ask("clear")

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            assert self.proc.stdin is not None
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@contextlib.contextmanager
def servers(gpu: dict[str, Any], cpu: dict[str, Any]) -> Iterator[tuple[Server, Server]]:
    g = Server(name="gpu", gpu_fraction=1.0, **gpu)
    try:
        c = Server(name="cpu", gpu_fraction=0.0, **cpu)
        try:
            yield g, c
        finally:
            c.stop()
    finally:
        g.stop()


def hybrid(g: Server, c: Server, **kw: Any) -> HybridChatOllama:
    t = kw.pop("timeouts", Timeouts())
    return HybridChatOllama(
        model=kw.pop("model", MODEL),
        backends=[
            BackendConfig(name="gpu", base_url=g.url, timeouts=t),
            BackendConfig(name="cpu", kind="cpu", base_url=c.url, timeouts=t),
        ],
        **kw,
    )


def settle(model: HybridChatOllama) -> None:
    """Wait for the background speed calibrations the last batch started (their futures)."""
    for fut in list(model.router.calibration_futures.values()):
        fut.result(timeout=60)


def batch(model: HybridChatOllama, n: int) -> tuple[float, dict[str, int]]:
    async def go() -> tuple[float, dict[str, int]]:
        t = time.perf_counter()
        msgs = await asyncio.gather(*(model.ainvoke(f"q{i}") for i in range(n)))
        used: dict[str, int] = {}
        for m in msgs:
            b = m.response_metadata["backend"]
            used[b] = used.get(b, 0) + 1
        return time.perf_counter() - t, used

    return asyncio.run(go())


EQUAL = SpeedPrior(gpu_tokens_per_s=60, cpu_tokens_per_s=60, cpu_first_token_s=0.15)


def bench_batches(gpu_delay: float, cpu_delay: float) -> dict[str, Any]:
    out: dict[str, Any] = {"gpu_token_delay_s": gpu_delay, "cpu_token_delay_s": cpu_delay}
    spec = {"loaded": [MODEL], "num_parallel": 1}
    with servers({**spec, "token_delay": gpu_delay}, {**spec, "token_delay": cpu_delay}) as (
        g,
        c,
    ):
        warm = hybrid(g, c)
        batch(warm, 2)  # connections and imports
        warm.close()
        for n in (6, 16):
            row: dict[str, Any] = {}
            gpu_only = hybrid(g, c, spillover=False)
            row["gpu_only_s"], _ = batch(gpu_only, n)
            gpu_only.close()
            static = hybrid(g, c, speed_prior=EQUAL)  # the old rule: spill when saturated
            row["static_spillover_s"], row["static_used"] = batch(static, n)
            static.close()
            fresh = hybrid(g, c)
            row["default_first_batch_s"], row["default_first_used"] = batch(fresh, n)
            settle(fresh)  # what the first batch taught it, calibration included
            row["default_steady_s"], row["default_steady_used"] = batch(fresh, n)
            st = fresh.stats()
            row["learned_speeds"] = {b: st[b]["speeds"].get(MODEL) for b in ("gpu", "cpu")}
            row["calibrations"] = {b: st[b]["calibrations"] for b in ("gpu", "cpu")}
            fresh.close()
            off = hybrid(g, c, calibrate_speeds=False)  # the same, without calibration
            _, row["no_calibration_first_used"] = batch(off, n)
            row["no_calibration_second_s"], row["no_calibration_second_used"] = batch(off, n)
            row["no_calibration_second_s"] = round(row["no_calibration_second_s"], 3)
            off.close()
            best = min(row["gpu_only_s"], row["static_spillover_s"])
            row["default_steady_vs_best"] = round(row["default_steady_s"] / best, 3)
            row["default_first_vs_best"] = round(row["default_first_batch_s"] / best, 3)
            row["spillover_gain_steady"] = round(row["gpu_only_s"] / row["default_steady_s"], 3)
            for k in ("gpu_only_s", "static_spillover_s", "default_first_batch_s"):
                row[k] = round(row[k], 3)
            row["default_steady_s"] = round(row["default_steady_s"], 3)
            out[f"batch_{n}"] = row
    return out


def bench_hung_warm_gpu() -> dict[str, Any]:
    """(c): the GPU accepts and never answers a chat; its /api/tags and /api/ps answer."""
    with servers({"loaded": [MODEL], "fault": "hang_before_first_chunk"}, {"loaded": [MODEL]}) as (
        g,
        c,
    ):
        cpu_only = HybridChatOllama(
            model=MODEL, backends=[BackendConfig(name="cpu", kind="cpu", base_url=c.url)]
        )
        t = time.perf_counter()
        cpu_only.invoke("hi")
        cpu_only.invoke("hi")
        t_cpu = (time.perf_counter() - t) / 2
        cpu_only.close()
        model = hybrid(g, c, breaker=BreakerPolicy(cooldown=2.0, max_cooldown=8.0))
        t = time.perf_counter()
        first = model.invoke("hi")
        t_first = time.perf_counter() - t
        later: list[float] = []
        until = time.perf_counter() + 12.0  # several cooldowns and probe-granted trials
        while time.perf_counter() < until:
            t = time.perf_counter()
            model.invoke("hi")
            later.append(time.perf_counter() - t)
            model.refresh()  # probes answer: a trial is granted (once per outage)
            time.sleep(0.25)
        attempts = first.response_metadata["contextharbor"]["attempts"]
        model.close()
        chats = g.count("/api/chat")
        g.clear()
    return {
        "default_timeouts": {"first_token_s": 120.0, "warm_first_token_timeout_s": 10.0},
        "first_call_s": round(t_first, 3),
        "first_call_attempt": attempts[0]["message"] if attempts else None,
        "cpu_answer_s": round(t_cpu, 4),
        "later_calls": len(later),
        "later_max_s": round(max(later), 3),
        "later_median_s": round(statistics.median(later), 4),
        "gpu_chat_requests": chats,
    }


def bench_first_call_model_on_cpu_only() -> dict[str, Any]:
    """(d): the model exists only on the CPU server; a freshly built instance's first call."""
    with servers({"models": ["other:1b"]}, {"models": [MODEL, "qwen2.5:7b"]}) as (g, c):
        out: dict[str, Any] = {}
        for how in ("invoke", "ainvoke", "stream"):
            m = hybrid(g, c, model="qwen2.5:7b")
            if how == "invoke":
                backend = m.invoke("hi").response_metadata["backend"]
            elif how == "ainvoke":
                backend = asyncio.run(m.ainvoke("hi")).response_metadata["backend"]
            else:
                backend = next(iter(m.stream("hi"))).response_metadata["backend"]
            m.close()
            out[how] = backend
        out["gpu_chat_requests"] = g.count("/api/chat")
    return out


_FIRST_CALL = textwrap.dedent(
    """
    import sys, time, json
    which, gpu, cpu = sys.argv[1:4]
    from langchain_ollama import ChatOllama
    from langchain_contextharbor import BackendConfig, HybridChatOllama
    t = time.perf_counter()
    if which == "chatollama":
        m = ChatOllama(model="llama3.2:1b", base_url=gpu)
    else:
        m = HybridChatOllama(model="llama3.2:1b", backends=[
            BackendConfig(name="gpu", base_url=gpu),
            BackendConfig(name="cpu", kind="cpu", base_url=cpu)])
    m.invoke("hi")
    print(json.dumps({"first_call_ms": (time.perf_counter() - t) * 1000}))
    """
)

_RSS = textwrap.dedent(
    """
    import sys, json, gc, threading, asyncio, time
    which, gpu, cpu, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    from langchain_ollama import ChatOllama
    from langchain_contextharbor import BackendConfig, HybridChatOllama
    def rss():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    def make():
        if which == "chatollama":
            return ChatOllama(model="llama3.2:1b", base_url=gpu)
        return HybridChatOllama(model="llama3.2:1b", backends=[
            BackendConfig(name="gpu", base_url=gpu),
            BackendConfig(name="cpu", kind="cpu", base_url=cpu)])
    make().invoke("warm up")
    gc.collect()
    before, threads = rss(), threading.active_count()
    kept = []
    for _ in range(n):
        m = make()
        m.invoke("hi")
        kept.append(m)
    time.sleep(0.5)
    gc.collect()
    per = (rss() - before) / n
    one = kept[0]
    # a new event loop per call vs one loop
    new_loop = None
    try:  # ChatOllama's async client is bound to its first loop: a second asyncio.run fails
        asyncio.run(one.ainvoke("hi"))
        t = time.perf_counter()
        for _ in range(20):
            asyncio.run(one.ainvoke("hi"))
        new_loop = (time.perf_counter() - t) / 20 * 1000
    except RuntimeError:
        pass
    async def same(m):
        for _ in range(5):
            await m.ainvoke("warm up")
        t = time.perf_counter()
        for _ in range(20):
            await m.ainvoke("hi")
        return (time.perf_counter() - t) / 20 * 1000
    one_loop = asyncio.run(same(make()))
    print(json.dumps({"rss_per_instance_bytes": per,
                      "threads_per_instance": (threading.active_count() - threads) / n,
                      "new_loop_call_ms": new_loop, "one_loop_call_ms": one_loop}))
    """
)


def _py(code: str, *args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def bench_first_call_and_memory(runs: int) -> dict[str, Any]:
    spec = {"loaded": [MODEL], "num_parallel": 4}
    with servers(spec, spec) as (g, c):
        first: dict[str, list[float]] = {"chatollama": [], "hybrid": []}
        for _ in range(runs):  # interleaved, fresh processes
            for which in first:
                first[which].append(_py(_FIRST_CALL, which, g.url, c.url)["first_call_ms"])
        mem = {w: _py(_RSS, w, g.url, c.url, "20") for w in ("chatollama", "hybrid")}
    med = {w: statistics.median(v) for w, v in first.items()}
    return {
        "runs": runs,
        "first_call_median_ms": {w: round(v, 1) for w, v in med.items()},
        "first_call_ratio": round(med["hybrid"] / med["chatollama"], 3),
        "rss_per_used_instance_bytes": {
            w: round(m["rss_per_instance_bytes"]) for w, m in mem.items()
        },
        "rss_ratio": round(
            mem["hybrid"]["rss_per_instance_bytes"]
            / max(1.0, mem["chatollama"]["rss_per_instance_bytes"]),
            3,
        ),
        "threads_per_used_instance": {
            w: round(m["threads_per_instance"], 2) for w, m in mem.items()
        },
        "new_event_loop_call_ms": {
            w: None if m["new_loop_call_ms"] is None else round(m["new_loop_call_ms"], 2)
            for w, m in mem.items()
        },
        "one_event_loop_call_ms": {w: round(m["one_loop_call_ms"], 2) for w, m in mem.items()},
    }


def _used(u: dict[str, int]) -> str:
    return f"{u.get('gpu', 0)}/{u.get('cpu', 0)}"


def markdown(r: dict[str, Any]) -> str:
    a, b, c, d, f = r["a_gpu_20x"], r["b_equal"], r["c_hung_warm_gpu"], r["d_cpu_only"], r["first"]
    lines = [
        "<!-- bench:routing -->",
        f"Measured {r.get('date', '')}, {r['machine']}; wall time of each batch "
        "(served gpu/cpu). Stand-ins in their own processes on loopback, one generation slot "
        "each, 7 tokens per answer; raw numbers in `benchmarks/bench_routing.json`.",
        "",
        "| scenario | batch | GPU only | static spill-over | default, fresh instance | "
        "default, learned | learned vs best | fresh vs best | learned, calibration off |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, res in (("(a) GPU 20x faster per token", a), ("(b) equal speeds", b)):
        for n in (6, 16):
            row = res[f"batch_{n}"]
            lines.append(
                f"| {name} | {n} | {row['gpu_only_s']} s | {row['static_spillover_s']} s "
                f"({_used(row['static_used'])}) | {row['default_first_batch_s']} s "
                f"({_used(row['default_first_used'])}) | {row['default_steady_s']} s "
                f"({_used(row['default_steady_used'])}) | {row['default_steady_vs_best']}x | "
                f"{row['default_first_vs_best']}x | {row['no_calibration_second_s']} s "
                f"({_used(row['no_calibration_second_used'])}) |"
            )
    cal = "; ".join(
        f"{tag} batch of {n}: {res[f'batch_{n}']['calibrations']['cpu']['sent']}"
        for tag, res in (("(a)", a), ("(b)", b))
        for n in (6, 16)
    )
    lines += [
        "",
        f"Speed calibration requests the default instance sent to the CPU: {cal}.",
        "",
        f"(c) hung warm GPU, default timeouts: first call {c['first_call_s']} s (warm deadline "
        f"10 s + the CPU's answer, {c['cpu_answer_s']} s); the slowest of {c['later_calls']} "
        f"later calls {c['later_max_s']} s (breaker cooldown 2 s; a probe-granted trial per "
        "outage).",
        "",
        f"(d) model only on the CPU server, fresh instance: invoke -> {d['invoke']}, ainvoke "
        f"-> {d['ainvoke']}, stream -> {d['stream']}; requests to the GPU's /api/chat: "
        f"{d['gpu_chat_requests']}.",
        "",
        "| first call and memory | ChatOllama | HybridChatOllama | ratio |",
        "|---|---|---|---|",
        f"| fresh process: construction + first call (median of {f['runs']}) | "
        f"{f['first_call_median_ms']['chatollama']} ms | {f['first_call_median_ms']['hybrid']} ms"
        f" | {f['first_call_ratio']}x |",
        f"| call from a new event loop (`asyncio.run` each) | "
        f"{f['new_event_loop_call_ms']['chatollama']} ms | "
        f"{f['new_event_loop_call_ms']['hybrid']} ms | |".replace(
            "None ms", "fails (client bound to its first loop)"
        ),
        f"| call within one event loop | {f['one_event_loop_call_ms']['chatollama']} ms | "
        f"{f['one_event_loop_call_ms']['hybrid']} ms | |",
        f"| RSS per used instance (20 kept) | "
        f"{f['rss_per_used_instance_bytes']['chatollama'] / 1e6:.2f} MB | "
        f"{f['rss_per_used_instance_bytes']['hybrid'] / 1e6:.2f} MB | {f['rss_ratio']}x |",
        f"| threads per used instance | {f['threads_per_used_instance']['chatollama']} | "
        f"{f['threads_per_used_instance']['hybrid']} | |",
        "<!-- /bench:routing -->",
    ]
    return "\n".join(lines)


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 7
    out = Path(__file__).with_name("bench_routing.json")
    if len(sys.argv) > 1 and sys.argv[1] == "--markdown":  # re-print the last run's table
        print(markdown(json.loads(out.read_text())))
        return
    r: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python benchmarks/bench_routing.py " + " ".join(sys.argv[1:]),
    }
    if len(sys.argv) > 2 and sys.argv[2] == "first":  # only the first-call/memory figures
        print(json.dumps(bench_first_call_and_memory(runs), indent=2))
        return
    r["d_cpu_only"] = bench_first_call_model_on_cpu_only()
    r["a_gpu_20x"] = bench_batches(0.002, 0.04)
    r["b_equal"] = bench_batches(0.01, 0.01)
    r["c_hung_warm_gpu"] = bench_hung_warm_gpu()
    r["first"] = bench_first_call_and_memory(runs)
    out.write_text(json.dumps(r, indent=2) + "\n")
    md = markdown(r)
    print(md)
    from _bench import update_doc  # benchmarks/ is on sys.path when run as a script

    update_doc("routing", "\n".join(md.splitlines()[1:-1]))


if __name__ == "__main__":
    main()
