"""Fleet mode benchmark: 4 worker processes, with and without a shared Redis.

Run: ``python benchmarks/bench_fleet.py`` (needs ``redis-server`` and the ``[fleet]`` extra).
Writes ``benchmarks/results/fleet.json`` and the table between the ``bench:fleet`` markers of
docs/benchmarks.md.

What it measures (each worker process runs its own HybridChatOllama, like gunicorn workers;
the servers are Ollama stand-ins with one slot each, ``num_parallel=1``; ``max_parallel=1``):

1. load: 4 workers x 8 concurrent calls, on two stand-ins of equal speed and on a GPU
   stand-in 20x faster than the CPU one: throughput (calls/s) and p50/p95 call latency,
   fleet mode vs workers on their own. Each mode has its own pair of stand-ins.
2. probes: background probes with ``probe_ttl`` = 0.5 s while the workers call: probe
   requests (``/api/version``) per backend per TTL, fleet vs alone.
3. death: the GPU stand-in is stopped mid-run under the same load: failed attempts on it
   across the fleet (every worker sends 8 concurrent calls; the cooldown is 600 s).
4. hook cost: in one process, the router's per-call work (plan + acquire + record +
   release) with and without the Redis hooks, and the median ``invoke()`` against a fast
   stand-in with and without fleet mode (interleaved rounds).
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from langchain_contextharbor.testing import OllamaStandIn  # noqa: E402
from langchain_contextharbor.testing.redis_server import RedisServer  # noqa: E402

WORKER = ROOT / "tests" / "fleet" / "fleet_worker.py"
MODEL = "llama3.2:1b"
WORKERS = 4
CONC = 8
CALLS = 32  # per worker and phase
CPU_TOKEN = 0.004  # seconds per token on the CPU stand-in (~7 tokens per answer)


def pctl(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def standin(name: str, token_delay: float) -> OllamaStandIn:
    return OllamaStandIn(
        name=name,
        models=[MODEL],
        gpu_fraction=1.0 if "gpu" in name else 0.0,
        num_parallel=1,
        token_delay=token_delay,
    ).start()


def run_workers(
    tmp: Path,
    modes: dict[str, dict[str, Any]],
    phases: list[dict[str, Any]],
    on_go: dict[str, Any] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Spawn the workers, run ``phases`` in order; returns every call record and the wall
    time of each phase. ``on_go[phase](tmp)`` runs right after a phase is started."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("CONTEXTHARBOR_REDIS_URL", None)
    procs = []
    for i in range(WORKERS):
        cfg = {"index": i, "dir": str(tmp), "model": MODEL, "modes": modes, "phases": phases}
        (tmp / f"cfg.{i}.json").write_text(json.dumps(cfg))
        procs.append(
            subprocess.Popen([sys.executable, str(WORKER), str(tmp / f"cfg.{i}.json")], env=env)
        )

    def wait(prefix: str) -> None:
        while len(list(tmp.glob(prefix + "*"))) < WORKERS:
            if any(p.poll() not in (None, 0) for p in procs):
                raise SystemExit("a worker failed")
            time.sleep(0.002)

    wall: dict[str, float] = {}
    try:
        wait("ready.")
        for ph in phases:
            t0 = time.perf_counter()
            (tmp / f"go.{ph['name']}").touch()
            if on_go and ph["name"] in on_go:
                on_go[ph["name"]](tmp)
            wait(f"done.{ph['name']}.")
            wall[ph["name"]] = time.perf_counter() - t0
        for p in procs:
            p.wait(120)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    records = [
        r for i in range(WORKERS) for r in json.loads((tmp / f"result.{i}.json").read_text())
    ]
    return records, wall


def bench_load(redis_url: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for scenario, gpu_token in (("equal speeds", CPU_TOKEN), ("GPU 20x faster", CPU_TOKEN / 20)):
        servers = {
            f"{m}_{k}": standin(f"{m}_{k}", gpu_token if k == "gpu" else CPU_TOKEN)
            for m in ("fleet", "local")
            for k in ("gpu", "cpu")
        }
        modes = {
            "fleet": {
                "urls": [servers["fleet_gpu"].url, servers["fleet_cpu"].url],
                "shared_state": redis_url,
            },
            "local": {"urls": [servers["local_gpu"].url, servers["local_cpu"].url]},
        }
        phases = [
            {"name": f"{m}", "mode": m, "calls": CALLS, "concurrency": CONC}
            for m in ("fleet", "local")
        ]
        with tempfile.TemporaryDirectory() as d:
            records, wall = run_workers(Path(d), modes, phases)
        res = {}
        for m in ("fleet", "local"):
            rs = [r for r in records if r["phase"] == m]
            lat = [r["seconds"] for r in rs if r["ok"]]
            res[m] = {
                "calls": len(rs),
                "failed": sum(not r["ok"] for r in rs),
                "throughput_per_s": round(len(lat) / wall[m], 1),
                "p50_ms": round(statistics.median(lat) * 1000, 1),
                "p95_ms": round(pctl(lat, 0.95) * 1000, 1),
                "served_by_gpu": sum(r.get("backend") == "gpu" for r in rs),
            }
        for s in servers.values():
            s.stop()
        out[scenario] = res
    return out


def bench_probes(redis_url: str, seconds: float = 4.0, ttl: float = 0.5) -> dict[str, Any]:
    servers = {
        f"{m}_{k}": standin(f"{m}_{k}", 0.0005) for m in ("fleet", "local") for k in ("gpu", "cpu")
    }
    modes = {
        "fleet": {
            "urls": [servers["fleet_gpu"].url, servers["fleet_cpu"].url],
            "shared_state": redis_url,
            "probes": True,
            "probe_ttl": ttl,
        },
        "local": {
            "urls": [servers["local_gpu"].url, servers["local_cpu"].url],
            "probes": True,
            "probe_ttl": ttl,
        },
    }
    phases = [
        {"name": m, "mode": m, "seconds": seconds, "concurrency": 2} for m in ("fleet", "local")
    ]
    with tempfile.TemporaryDirectory() as d:
        _, wall = run_workers(Path(d), modes, phases)
    res = {}
    for m in ("fleet", "local"):
        n = len(servers[f"{m}_gpu"].requests_to("/api/version"))
        res[m] = {
            "probes_per_backend": n,
            "ttls": round(wall[m] / ttl, 1),
            "per_ttl": round(n / (wall[m] / ttl), 2),
        }
    for s in servers.values():
        s.stop()
    return res


def bench_death(redis_url: str) -> dict[str, Any]:
    """Two ways a GPU dies. Under load (8 concurrent calls per worker) the calls queued on
    it fail over whatever the mode (they were sent before anyone knew); what fleet mode
    saves are the new attempts (connection refused) after that. One call at a time, worker
    0 first, then the others: the fleet pays one attempt, workers alone one each."""
    servers = {
        f"{m}_{k}": standin(f"{m}_{k}", CPU_TOKEN)
        for m in ("fleet", "local")
        for k in ("gpu", "cpu")
    }
    seq = {
        f"{m}_{k}": standin(f"seq_{m}_{k}", CPU_TOKEN)
        for m in ("fleet", "local")
        for k in ("gpu", "cpu")
    }
    modes = {
        "fleet": {
            "urls": [servers["fleet_gpu"].url, servers["fleet_cpu"].url],
            "shared_state": redis_url,
        },
        "local": {"urls": [servers["local_gpu"].url, servers["local_cpu"].url]},
        "seq-fleet": {
            "urls": [seq["fleet_gpu"].url, seq["fleet_cpu"].url],
            "shared_state": redis_url.replace("/3", "/5"),
        },
        "seq-local": {"urls": [seq["local_gpu"].url, seq["local_cpu"].url]},
    }
    phases = [
        {"name": m, "mode": m, "calls": CALLS, "concurrency": CONC} for m in ("fleet", "local")
    ]
    phases += [
        {"name": m, "mode": m, "calls": 1, "after_first": True} for m in ("seq-fleet", "seq-local")
    ]

    def killer(m: str) -> Any:
        def kill(_: Path) -> None:
            gpu = servers[f"{m}_gpu"]
            while len(gpu.requests_to("/api/chat")) < 8:
                time.sleep(0.001)
            gpu.stop()

        return kill

    seq["fleet_gpu"].stop()
    seq["local_gpu"].stop()
    with tempfile.TemporaryDirectory() as d:
        records, _ = run_workers(
            Path(d), modes, phases, on_go={m: killer(m) for m in ("fleet", "local")}
        )
    res = {}
    for m in ("fleet", "local", "seq-fleet", "seq-local"):
        rs = [r for r in records if r["phase"] == m]
        fails = [(r, a) for r in rs for a in r["attempts"] if a["backend"] == "gpu"]
        # When the fleet first heard of the death: the end of the earliest failed attempt.
        first = min((r["start"] + a["elapsed_ms"] / 1000 for r, a in fails), default=0.0)
        res[m] = {
            "failed_gpu_attempts": len(fails),
            "by_calls_started_after_the_first_failure": sum(r["start"] > first for r, _ in fails),
            "calls_failed": sum(not r["ok"] for r in rs),
        }
    for s in [*servers.values(), *seq.values()]:
        s.stop()
    return res


def bench_hooks(
    redis_url: str, redis_pid: int | None = None, n: int = 4000, rounds: int = 10
) -> dict[str, Any]:
    from langchain_contextharbor import BackendConfig, HybridChatOllama

    # Servers out of this process, as a real Ollama would be: stand-in threads in the client
    # process would hold the GIL while the client waits for Redis and inflate every figure.
    # Servers and Redis on the last core, the client on the first (when there are two).
    sys.path.insert(0, str(ROOT / "tests" / "chaos"))
    from chaos_harness import StandInProcess

    last = (os.cpu_count() or 1) - 1
    pin = last if last > 0 else None
    gpu = StandInProcess("hook_gpu", 1.0, 0.0, cpu=pin)
    cpu = StandInProcess("hook_cpu", 0.0, 0.0, cpu=pin)
    gpu.start()
    cpu.start()
    if pin is not None and hasattr(os, "sched_setaffinity"):
        if redis_pid is not None:
            os.sched_setaffinity(redis_pid, {pin})
        before = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {0})

    def make(shared: str) -> HybridChatOllama:
        return HybridChatOllama(
            model=MODEL,
            backends=[
                BackendConfig(name="gpu", base_url=gpu.url, kind="gpu"),
                BackendConfig(name="cpu", base_url=cpu.url, kind="cpu"),
            ],
            shared_state=shared,
            background_probes=False,
        )

    models = {"local": make("local"), "fleet": make(redis_url)}
    # Interleaved blocks; the figure is the median over blocks of each block's median, which
    # keeps a noisy shared machine from favouring either mode.
    hooks: dict[str, list[float]] = {"local": [], "fleet": []}
    for _ in range(rounds):
        for mode, m in models.items():
            r = m.router
            policy = m._policy()
            per: list[float] = []
            for _ in range(n // rounds):
                t0 = time.perf_counter()
                r.prepare(MODEL)  # the fleet's view is read here, before the plan
                p = r.plan(MODEL, num_ctx=2048, sizes=m.model_sizes, policy=policy)
                name = p.candidates[0].backend
                r.acquire(name, [c.backend for c in p.candidates[1:]])
                r.record_success(name, 0.001, None)
                r.release(name)
                per.append((time.perf_counter() - t0) * 1e6)
            hooks[mode].append(statistics.median(per))
    invoke: dict[str, list[float]] = {"local": [], "fleet": []}
    for m in models.values():
        m.invoke("warm up")
    diffs: list[float] = []
    for _ in range(rounds * 3):
        block: dict[str, float] = {}
        for mode, m in models.items():
            per = []
            for _ in range(20):
                t0 = time.perf_counter()
                m.invoke("hello")
                per.append((time.perf_counter() - t0) * 1000)
            block[mode] = statistics.median(per)
            invoke[mode].append(block[mode])
        diffs.append(block["fleet"] - block["local"])
    gpu.stop()
    cpu.stop()
    if pin is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, before)
    h = {k: statistics.median(v) for k, v in hooks.items()}
    inv = {k: statistics.median(v) for k, v in invoke.items()}
    return {
        "router_per_call_us": {k: round(v, 1) for k, v in h.items()},
        "hooks_added_us": round(h["fleet"] - h["local"], 1),
        "invoke_median_ms": {k: round(v, 3) for k, v in inv.items()},
        "invoke_added_ms": round(statistics.median(diffs), 3),
        "note": "median over interleaved blocks; invoke figures swing with the machine's load",
    }


def main() -> None:
    only = set(sys.argv[1:])  # e.g. "death hooks": run only those parts (for development)
    with RedisServer() as redis_srv:
        url = redis_srv.url
        parts = {
            "load": lambda: bench_load(url.replace("/0", "/1")),
            "probes": lambda: bench_probes(url.replace("/0", "/2")),
            "death": lambda: bench_death(url.replace("/0", "/3")),
            "hooks": lambda: bench_hooks(url.replace("/0", "/4"), redis_srv.pid),
        }
        results: dict[str, Any] = {
            "command": "python benchmarks/bench_fleet.py",
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "cpus": os.cpu_count(),
            "workers": WORKERS,
            "concurrency_per_worker": CONC,
        }
        for name, fn in parts.items():
            if not only or name in only:
                results[name] = fn()
    if only:
        print(json.dumps(results, indent=2))
        return
    publish(results)
    print(json.dumps(results, indent=2))


def table(r: dict[str, Any]) -> str:
    """The markdown between the ``bench:fleet`` markers of docs/benchmarks.md."""

    def ms(x: float) -> str:
        return f"{x / 1000:.2f} s" if x >= 1000 else f"{x:.0f} ms"

    def row(x: dict[str, Any]) -> str:
        return f"{x['throughput_per_s']:.1f} | {ms(x['p50_ms'])} | {ms(x['p95_ms'])}"

    load, d, h, p = r["load"], r["death"], r["hooks"], r["probes"]
    lines = [
        f"Run {r['when']} on {r['cpus']} cores; raw numbers in `benchmarks/results/fleet.json`.",
        "",
        "| 4 workers x 8 concurrent calls | fleet: calls/s | p50 | p95 "
        "| alone: calls/s | p50 | p95 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, x in load.items():
        lines.append(f"| {name} | {row(x['fleet'])} | {row(x['local'])} |")
    lines += [
        "",
        "| | fleet | alone |",
        "|---|---|---|",
        f"| probe requests per backend per TTL (TTL 0.5 s) | {p['fleet']['per_ttl']:.2f} | "
        f"{p['local']['per_ttl']:.2f} |",
        "| GPU stopped, one call at a time, worker 0 first: failed attempts on it | "
        f"{d['seq-fleet']['failed_gpu_attempts']} | {d['seq-local']['failed_gpu_attempts']} |",
        "| GPU stopped under the 4 x 8 load: failed attempts on it | "
        f"{d['fleet']['failed_gpu_attempts']} | {d['local']['failed_gpu_attempts']} |",
        "| ... of which by calls started after the first failure | "
        f"{d['fleet']['by_calls_started_after_the_first_failure']} | "
        f"{d['local']['by_calls_started_after_the_first_failure']} |",
        "| router work per call (plan + acquire + record + release), median | "
        f"{h['router_per_call_us']['fleet']:.0f} µs | {h['router_per_call_us']['local']:.0f} µs |",
        "| `invoke()` on a fast stand-in, median of interleaved blocks | "
        f"{h['invoke_median_ms']['fleet']:.2f} ms | {h['invoke_median_ms']['local']:.2f} ms |",
    ]
    return "\n".join(lines)


def publish(results: dict[str, Any]) -> None:
    """benchmarks/results/fleet.json and the table in docs/benchmarks.md."""
    results_dir = ROOT / "benchmarks" / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "fleet.json").write_text(json.dumps(results, indent=2) + "\n")
    doc = ROOT / "docs" / "benchmarks.md"
    text = doc.read_text()
    pat = re.compile(r"(<!-- bench:fleet -->\n).*?(<!-- /bench:fleet -->)", re.S)
    if pat.search(text):
        doc.write_text(pat.sub(lambda m: m.group(1) + table(results) + "\n" + m.group(2), text))


if __name__ == "__main__":
    main()
