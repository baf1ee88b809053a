"""One Ollama stand-in in its own process, steered over stdin (used by the chaos suite).

Why a separate process: the chaos run kills servers with SIGKILL and restarts them on the
same port, as happens to a real Ollama, and the client under test must not share a GIL with
the servers. The stand-in's own CLI has no way to inject faults at run time, so this tiny
driver reads one JSON command per line (``{"op": "inject", "fault": "busy", "count": 2}``,
``{"op": "clear"}``) and answers ``ok`` (or ``error: ...``) on stdout. It exits when stdin
closes, so a dead parent never leaves it behind.

Usage: ``python standin_child.py NAME PORT GPU_FRACTION HANG_CAP TOKEN_DELAY [NUM_PARALLEL]``
(the benchmarks use it too).
"""

from __future__ import annotations

import json
import sys

from langchain_contextharbor.testing import OllamaStandIn, StandInModel

MODEL = "llama3.2:1b"
EMBED = "nomic-embed-text"
#: Both servers hold the same build of the embedder, as HybridOllamaEmbeddings requires.
EMBED_DIGEST = "c3" * 32


def main() -> int:
    name, port, gpu_fraction, hang_cap, token_delay = sys.argv[1:6]
    num_parallel = int(sys.argv[6]) if len(sys.argv) > 6 else 64
    srv = OllamaStandIn(
        name=name,
        port=int(port),
        models=[MODEL, StandInModel(EMBED, digest=EMBED_DIGEST)],
        loaded=[MODEL],
        gpu_fraction=float(gpu_fraction),
        hang_cap=float(hang_cap),
        token_delay=float(token_delay),
        num_parallel=num_parallel,
    )
    srv.start()
    print(f"listening {srv.port}", flush=True)
    for line in sys.stdin:
        try:
            cmd = json.loads(line)
            op = cmd.pop("op")
            if op == "inject":
                srv.inject(cmd.pop("fault"), **cmd)
            elif op == "clear":
                srv.clear_faults()
            else:
                raise ValueError(f"unknown op {op!r}")
            print("ok", flush=True)
        except Exception as exc:
            print(f"error: {type(exc).__name__}: {exc}", flush=True)
    srv.stop(timeout=1.0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
