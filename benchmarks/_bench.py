"""What every benchmark script shares: servers in their own processes, the peers, interleaved
timing, and writing results (JSON), plots (PNG) and the tables of docs/benchmarks.md.

Why interleaved blocks and ratios: these benchmarks run on a shared 2-core machine whose
speed drifts from minute to minute; paths measured in alternating short blocks see the same
drift, so their ratio is stable while absolute milliseconds are not. Each script repeats its
measurement and reports the range across runs.

Plots need matplotlib and the peer needs litellm + langchain-litellm: the ``bench`` extra
(``pip install -e '.[bench]'``). Without them a script still runs and says what it skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "chaos"))  # StandInProcess, Blackhole

from chaos_harness import Blackhole, StandInProcess  # noqa: E402

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # the machine is offline

MODEL = "llama3.2:1b"
X = "\u00d7"  # the multiplication sign of ratios in the tables
DASH = "\u2013"  # the en dash of ranges
RESULTS = ROOT / "benchmarks" / "results"
IMG = ROOT / "docs" / "img"
DOC = ROOT / "docs" / "benchmarks.md"

__all__ = [
    "DASH",
    "DOC",
    "IMG",
    "MODEL",
    "RESULTS",
    "Blackhole",
    "StandInProcess",
    "X",
    "machine",
    "p95",
    "peer",
    "pin_client",
    "plot_bars",
    "plot_lines",
    "save",
    "servers",
    "update_doc",
]


def machine() -> dict[str, Any]:
    """Where a figure was measured (kept with every result file)."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(terse=True),
        "load_1min_at_start": load,
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    }


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def p95(xs: list[float]) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(0.95 * len(s)))]


def pin_client() -> None:
    """Client on core 0, servers (``servers(pin=True)``) on core 1."""
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {0})


@contextlib.contextmanager
def servers(
    *specs: tuple[str, float, float, int], pin: bool = True
) -> Iterator[list[StandInProcess]]:
    """Stand-ins in their own processes: ``(name, gpu_fraction, token_delay, num_parallel)``."""
    procs = [
        StandInProcess(n, frac, delay, par, cpu=1 if pin else None) for n, frac, delay, par in specs
    ]
    try:
        for p in procs:
            p.start()
        yield procs
    finally:
        for p in procs:
            p.stop()


# ---------------------------------------------------------------------------- the peer
def peer(urls: dict[str, str], timeout: float | None = None) -> tuple[Any, Any, str | None]:
    """LiteLLM's Router over the same servers (first = primary, the rest its fallbacks)
    and ChatLiteLLMRouter around it; ``(None, None, why)`` when not installed."""
    try:
        from langchain_litellm import ChatLiteLLMRouter
        from litellm import Router
    except ImportError as exc:
        return None, None, f"litellm / langchain-litellm not installed ({exc.name})"
    names = list(urls)
    model_list = []
    for n in names:
        params: dict[str, Any] = {"model": f"ollama_chat/{MODEL}", "api_base": urls[n]}
        if timeout is not None:
            params["timeout"] = timeout
            params["stream_timeout"] = timeout
        model_list.append({"model_name": n, "litellm_params": params})
    router = Router(
        model_list=model_list,
        fallbacks=[{names[0]: names[1:]}] if len(names) > 1 else [],
        num_retries=0,
    )
    return router, ChatLiteLLMRouter(router=router, model_name=names[0]), None


def litellm_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("litellm")
    except Exception:
        return None


# ---------------------------------------------------------------------------- timing
def run_async(
    loop: asyncio.AbstractEventLoop, fn: Callable[[], Awaitable[Any]]
) -> Callable[[], Any]:
    return lambda: loop.run_until_complete(fn())


def interleave(
    paths: dict[str, Callable[[], Any]], calls: int, block: int = 20, warmup: int = 30
) -> dict[str, list[float]]:
    """``calls`` timed calls per path, in alternating blocks of ``block`` calls."""
    for fn in paths.values():
        for _ in range(warmup):
            fn()
    out: dict[str, list[float]] = {k: [] for k in paths}
    done = 0
    while done < calls:
        n = min(block, calls - done)
        for name, fn in paths.items():
            ts = out[name]
            for _ in range(n):
                t = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t)
        done += n
    return out


def summary_ms(xs: list[float]) -> dict[str, float]:
    return {
        "median_ms": round(statistics.median(xs) * 1000, 3),
        "p95_ms": round(p95(xs) * 1000, 3),
    }


def spread(values: list[float]) -> dict[str, float]:
    """Median and range across repeated runs."""
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
    }


def fmt_ratio(s: dict[str, float]) -> str:
    if f"{s['min']:.2f}" == f"{s['max']:.2f}":
        return f"{s['median']:.2f}{X}"
    return f"{s['median']:.2f}{X} ({s['min']:.2f}{DASH}{s['max']:.2f})"


# ---------------------------------------------------------------------------- output
def save(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def update_doc(name: str, markdown: str, doc: Path = DOC) -> bool:
    """Replace the block between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->``
    in docs/benchmarks.md; False (and nothing written) when the markers are missing."""
    text = doc.read_text() if doc.exists() else ""
    pat = re.compile(
        rf"(<!-- bench:{re.escape(name)} -->\n).*?(<!-- /bench:{re.escape(name)} -->)", re.S
    )
    if not pat.search(text):
        print(f"note: no <!-- bench:{name} --> block in {doc}; table printed only")
        return False
    doc.write_text(pat.sub(lambda m: m.group(1) + markdown.rstrip() + "\n" + m.group(2), text))
    return True


def plot_lines(
    name: str,
    series: dict[str, list[float]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    logy: bool = False,
    panels: dict[str, dict[str, list[float]]] | None = None,
    vline: dict[str, float] | None = None,
    errors: dict[str, dict[str, list[int]]] | None = None,
) -> str | None:
    """A small PNG under docs/img/; returns its path relative to docs/, or None.

    ``vline``: per panel, an x where something happened (the fault); ``errors``: per panel
    and series, the 1-based x of calls that raised (drawn as crosses)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib not installed (the 'bench' extra); no plot")
        return None
    IMG.mkdir(parents=True, exist_ok=True)
    groups = panels or {title: series}
    n = len(groups)
    cols = 2 if n > 1 else 1
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols / 1.3, 3.2 * rows), squeeze=False)
    for ax, (sub, ser) in zip(axes.flat, groups.items(), strict=False):
        for label, ys in ser.items():
            (line,) = ax.plot(
                range(1, len(ys) + 1), ys, marker=".", markersize=3, linewidth=1, label=label
            )
            bad = (errors or {}).get(sub, {}).get(label, [])
            if bad:
                ax.plot(
                    bad,
                    [ys[i - 1] for i in bad],
                    "x",
                    color=line.get_color(),
                    markersize=7,
                    label=f"{label}: raised",
                )
        if vline and sub in vline:
            ax.axvline(vline[sub], color="grey", linestyle=":", linewidth=1)
        ax.set_title(sub, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
        if logy:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.tight_layout()
    path = IMG / f"{name}.png"
    fig.savefig(path, dpi=72)
    plt.close(fig)
    return f"img/{name}.png"


def plot_bars(
    name: str, groups: dict[str, dict[str, float]], *, title: str, ylabel: str
) -> str | None:
    """Grouped bars (one group per setting, one bar per policy) as a small PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib not installed (the 'bench' extra); no plot")
        return None
    IMG.mkdir(parents=True, exist_ok=True)
    labels = list(groups)
    series = list(next(iter(groups.values())))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(7.5, 3.4))
    for i, s in enumerate(series):
        xs = [g + i * width for g in range(len(labels))]
        ax.bar(xs, [groups[lab].get(s, 0.0) for lab in labels], width, label=s)
    ax.set_xticks([g + 0.4 - width / 2 for g in range(len(labels))])
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    path = IMG / f"{name}.png"
    fig.savefig(path, dpi=72)
    plt.close(fig)
    return f"img/{name}.png"
