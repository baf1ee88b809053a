"""Issue 18 item 2: a fresh process whose GPU URL hangs from the start (a listener that
accepts and never answers) and whose CPU is a healthy stand-in. How long until the first
answer, through HybridChatOllama with default settings (probe timeout 1.5 s,
first-token deadline 120 s), against ChatOllama.with_fallbacks on the same hang?

Run: ``python benchmarks/bench_hung_start.py [--runs 5]``. Each measurement is a fresh
Python process (nothing learned, nothing probed): it builds the model, then times its
first ``invoke`` from the call to the answer. The stand-in runs in its own process; the
hung listener in this one. ``with_fallbacks`` is measured as users build it: plain
ChatOllama has no timeout by default, so its primary never fails and the fallback is never
tried (the child is stopped at ``--limit`` seconds); and with ``client_kwargs={"timeout":
5}``, which bounds it by that timeout. Writes benchmarks/results/hung_start.json and the
``hung_start`` table of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from typing import Any

from _bench import DASH, MODEL, ROOT, machine, save, servers, update_doc

from langchain_contextharbor.testing.foreign import silent_listener

CHILD = r"""
import json, os, sys, time
kind = sys.argv[1]
gpu, cpu, model = os.environ["HS_GPU"], os.environ["HS_CPU"], os.environ["HS_MODEL"]
if kind == "hybrid":
    from langchain_contextharbor import BackendConfig, HybridChatOllama
    llm = HybridChatOllama(model=model, backends=[
        BackendConfig(name="gpu", base_url=gpu, kind="gpu"),
        BackendConfig(name="cpu", base_url=cpu, kind="cpu"),
    ])
else:
    from langchain_ollama import ChatOllama
    kw = {"client_kwargs": {"timeout": float(kind.split(":")[1])}} if ":" in kind else {}
    llm = ChatOllama(model=model, base_url=gpu, **kw).with_fallbacks(
        [ChatOllama(model=model, base_url=cpu, **kw)])
t0 = time.perf_counter()
msg = llm.invoke("hi")
took = time.perf_counter() - t0
meta = msg.response_metadata.get("contextharbor", {})
print(json.dumps({"s": took, "backend": meta.get("backend", "cpu (the fallback)"),
                  "attempts": meta.get("attempts", []), "skipped": meta.get("skipped", [])}))
"""


def one(kind: str, env: dict[str, str], limit: float) -> dict[str, Any]:
    try:
        out = subprocess.run(
            [sys.executable, "-c", CHILD, kind],
            env=env,
            capture_output=True,
            text=True,
            timeout=limit,
            cwd=ROOT,
        )
    except subprocess.TimeoutExpired:
        return {"s": None, "note": f"no answer within {limit:g} s (stopped)"}
    if out.returncode != 0:
        return {"s": None, "note": out.stderr.strip().splitlines()[-1][:200]}
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def measure(runs: int, limit: float) -> dict[str, Any]:
    with servers(("cpu", 0.0, 0.0, 4)) as (cpu,), silent_listener() as gpu_url:
        env = {**os.environ, "HS_GPU": gpu_url, "HS_CPU": cpu.url, "HS_MODEL": MODEL}
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        res: dict[str, list[dict[str, Any]]] = {}
        res["HybridChatOllama.invoke"] = [one("hybrid", env, limit) for _ in range(runs)]
        res["with_fallbacks.invoke (client timeout 5 s)"] = [
            one("fallbacks:5", env, limit) for _ in range(max(1, runs // 2))
        ]
        res["with_fallbacks.invoke (defaults: no timeout)"] = [one("fallbacks", env, limit)]
    return {"machine": machine(), "runs": runs, "limit_s": limit, "results": res}


def table(data: dict[str, Any]) -> str:
    m = data["machine"]
    lines = [
        f"Measured {m['date_utc']} UTC, load average {m['load_1min_at_start']:.2f} at start, "
        f"{m['cores']} cores; each figure a fresh process, from the first `invoke` to its "
        "answer. GPU URL: a listener that accepts and never answers; CPU: a stand-in.",
        "",
        "| path | first answer (median) | range | answered by |",
        "|---|---|---|---|",
    ]
    for path, rs in data["results"].items():
        secs = [r["s"] for r in rs if r.get("s") is not None]
        if secs:
            med = f"{statistics.median(secs):.2f} s"
            rng = f"{min(secs):.2f}{DASH}{max(secs):.2f} s ({len(secs)} runs)"
            who = ", ".join(sorted({str(r.get("backend")) for r in rs if r.get("s")}))
        else:
            med, rng, who = "none", rs[0].get("note", ""), "-"
        lines.append(f"| `{path}` | {med} | {rng} | {who} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--limit", type=float, default=30.0, help="seconds before a child is stopped")
    a = ap.parse_args()
    data = measure(a.runs, a.limit)
    save("hung_start", data)
    md = table(data)
    print(md)
    update_doc("hung_start", md)


if __name__ == "__main__":
    main()
