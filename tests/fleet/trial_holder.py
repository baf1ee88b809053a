"""A fleet worker that takes the fleet's trial call of the GPU and is then killed holding it.

Run as ``python trial_holder.py CONFIG.json`` (by tests/fleet/test_liveness.py). It builds one
HybridChatOllama in fleet mode on the real clocks, waits until its plan puts the GPU first (the
fleet's circuit is open and its cooldown, adopted from the fleet, is over: the call is the
trial), then calls. The parent has made the GPU hang on that call, so this process sits in the
trial until the parent SIGKILLs it: a gunicorn worker killed at the wrong moment.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main() -> None:
    cfg = json.loads(Path(sys.argv[1]).read_text())
    from langchain_contextharbor import BackendConfig, BreakerPolicy, HybridChatOllama, Timeouts

    t = Timeouts(connect=5.0, first_token=600.0, idle=600.0, probe=5.0)
    gpu_url, cpu_url = cfg["urls"]
    m = HybridChatOllama(
        model=cfg["model"],
        backends=[
            BackendConfig(name="gpu", base_url=gpu_url, kind="gpu", timeouts=t),
            BackendConfig(name="cpu", base_url=cpu_url, kind="cpu", timeouts=t),
        ],
        shared_state=cfg["redis"],
        breaker=BreakerPolicy(cooldown=1.0),
        background_probes=False,
        background_trials=False,  # the call itself is the trial (it holds the fleet's)
    )
    while m.select_backend().primary != "gpu":  # polling the fleet's cooldown, not a timeout
        time.sleep(0.02)
    m.invoke("hello")  # hangs at the GPU until this process is killed
    raise SystemExit("the trial call returned: the parent should have killed this worker")


if __name__ == "__main__":
    main()
