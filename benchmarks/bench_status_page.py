"""The status page in a real browser: how soon it shows a failover, and its screenshot.

Two stand-ins (GPU, CPU) behind one router; a HybridChatOllama shares it and its calls are
recorded as the proxy records its decisions. Headless chromium keeps the page open (it
polls its JSON every second). The GPU stand-in is stopped, the next call fails over to the
CPU, and the time until the page shows that decision is measured (five rounds). The
screenshot of the page afterwards is docs/img/status-page.png (docs/serve-status.md shows
it). Written here, not by the test run, so CI never changes tracked files.

Run: ``python benchmarks/bench_status_page.py`` (part of ``make bench``; needs the
``serve`` extra and chromium: ``scripts/ci_system_deps.sh``). Writes
benchmarks/results/status_page.json and docs/img/status-page.png.
"""

from __future__ import annotations

import argparse
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from _bench import IMG, MODEL, machine, save, summary_ms
from starlette.applications import Starlette

from langchain_contextharbor import BackendConfig, HybridChatOllama
from langchain_contextharbor._router import Router
from langchain_contextharbor.serve.status import routes
from langchain_contextharbor.testing import OllamaStandIn
from langchain_contextharbor.testing.asgi import ServedApp
from langchain_contextharbor.testing.browser import Browser, chromium_path


@dataclass
class State:
    router: Router
    configs: list[BackendConfig]
    decisions: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=200))


def record(state: State, endpoint: str, answer: Any) -> None:
    meta = answer.response_metadata["contextharbor"]
    state.decisions.append(
        {
            "time": time.time(),
            "endpoint": endpoint,
            "model": meta["model"],
            "backend": meta["backend"],
            "reasons": meta["reason"],
            "attempts": meta["attempts"],
            "status": 200,
        }
    )


SHOWN = (
    "(() => { const r = document.querySelector('tr.decision');"
    " return r && r.dataset.fallback == 'true' && r.dataset.backend == 'cpu'"
    " && document.querySelectorAll('tr.decision').length == %d; })()"
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    chromium = chromium_path()
    if chromium is None:
        raise SystemExit("chromium is not installed (scripts/ci_system_deps.sh)")
    with (
        OllamaStandIn(name="gpu", models=[MODEL]) as gpu,
        OllamaStandIn(name="cpu", models=[MODEL], gpu_fraction=0.0) as cpu,
    ):
        configs = [
            BackendConfig(name="gpu", base_url=gpu.url, max_parallel=2),
            BackendConfig(name="cpu", kind="cpu", base_url=cpu.url),
        ]
        llm = HybridChatOllama(model=MODEL, backends=configs)
        state = State(llm.router, llm.backend_configs)
        shown: list[float] = []
        with ServedApp(Starlette(routes=routes(state))) as served, Browser.launch(
            chromium
        ) as browser:
            for i in range(3):
                record(state, "/api/chat", llm.invoke(f"warm up {i}"))
            llm.refresh(MODEL)
            page = browser.new_page(served.url + "/")
            page.wait_for("document.querySelectorAll('tr.backend').length == 2")
            for _ in range(args.rounds):
                gpu.stop()
                llm.router.reset("gpu")  # each round fails over again (no open circuit)
                answer = llm.invoke("after the GPU stopped")
                assert answer.response_metadata["backend"] == "cpu"
                record(state, "/v1/chat/completions", answer)
                t0 = time.perf_counter()
                page.wait_for(SHOWN % len(state.decisions), timeout=10.0, interval=0.01)
                shown.append(time.perf_counter() - t0)
                gpu.start()
                record(state, "/api/chat", llm.invoke("the GPU is back"))
            gpu.stop()
            record(state, "/api/chat", llm.invoke("and gone again"))
            llm.refresh(MODEL)
            page.wait_for(
                "document.querySelector('tr.backend[data-name=gpu]').dataset.health == 'down'"
            )
            time.sleep(1.2)  # one more poll, so the screenshot shows the last state
            IMG.mkdir(parents=True, exist_ok=True)
            (IMG / "status-page.png").write_bytes(page.screenshot(width=1280, height=800))
        llm.close()
    out = {
        "machine": machine(),
        "rounds": args.rounds,
        "poll_interval_s": 1.0,
        "failover_shown_after": summary_ms(shown),
    }
    save("status_page", out)
    s = out["failover_shown_after"]
    print(f"failover on the page after: {s}")
    print(f"wrote {IMG / 'status-page.png'}")


if __name__ == "__main__":
    main()
