"""The router's own CPU time per call, commit by commit: which change made the hot path
dearer. Not part of ``make bench`` (it exports old trees of this repository).

For each commit, the package as of that commit is exported with ``git archive`` to a temporary
directory and measured in a fresh interpreter, with the HTTP layer replaced by canned chunks
(the same stream for plain ChatOllama and HybridChatOllama). The figure is the difference of
the two medians, so only the code around the stream counts.

Run: ``python benchmarks/router_cpu_history.py [--calls 3000] COMMIT...``
(default: the commits listed in docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MODEL = "llama3.2:1b"


def measure(calls: int) -> tuple[float, float]:
    """Run inside the exported tree: (router µs per invoke, per stream)."""
    from langchain_ollama import ChatOllama

    from langchain_contextharbor import HybridChatOllama

    def part(w: str, done: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {
            "model": MODEL,
            "created_at": "2025-01-01T00:00:00Z",
            "message": {"role": "assistant", "content": w},
            "done": done,
        }
        if done:
            d.update(done_reason="stop", prompt_eval_count=1, eval_count=7)
        return d

    parts = [part(w) for w in ["Hello", " from", " gpu", " (llama3.2:1b).", " You", " said:"]]
    parts.append(part(" hi"))
    final = part("", done=True)

    def canned(self: Any, messages: Any, stop: Any = None, **kw: Any) -> Iterator[Any]:
        self._chat_params(messages, stop, **kw)
        yield from parts
        yield final

    ChatOllama._create_chat_stream = canned  # type: ignore[method-assign]
    plain = ChatOllama(model=MODEL)
    hybrid = HybridChatOllama(model=MODEL, background_probes=False)
    paths: dict[str, Callable[[], Any]] = {
        "plain invoke": lambda: plain.invoke("hi"),
        "hybrid invoke": lambda: hybrid.invoke("hi"),
        "plain stream": lambda: list(plain.stream("hi")),
        "hybrid stream": lambda: list(hybrid.stream("hi")),
    }
    for fn in paths.values():
        for _ in range(200):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in paths}
    for _ in range(0, calls, 20):
        for name, fn in paths.items():
            for _ in range(20):
                t = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - t)
    us = {k: statistics.median(v) * 1e6 for k, v in samples.items()}
    return us["hybrid invoke"] - us["plain invoke"], us["hybrid stream"] - us["plain stream"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("commits", nargs="*")
    args = ap.parse_args()
    if args.measure:
        inv, st = measure(args.calls)
        print(f"{inv:.1f} {st:.1f}")
        return
    print("| commit | router µs per invoke | per stream |\n|---|---|---|")
    for commit in args.commits or ["HEAD"]:
        with tempfile.TemporaryDirectory() as tmp:
            archive = subprocess.run(
                ["git", "-C", str(ROOT), "archive", commit], check=True, capture_output=True
            ).stdout
            tar = Path(tmp) / "tree.tar"
            tar.write_bytes(archive)
            with tarfile.open(tar) as tf:
                tf.extractall(tmp, filter="data")
            env = dict(os.environ, PYTHONPATH=tmp)
            out = subprocess.run(
                [sys.executable, __file__, "--measure", "--calls", str(args.calls)],
                env=env,
                cwd=tmp,
                capture_output=True,
                text=True,
                timeout=600,
            )
            figures = out.stdout.split() if out.returncode == 0 else ["error", "error"]
            print(f"| `{commit}` | {figures[0]} | {figures[1]} |", flush=True)


if __name__ == "__main__":
    main()
