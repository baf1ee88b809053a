"""Helpers of the proxy tests: uvicorn in a thread on a free loopback port."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import uvicorn

from langchain_contextharbor import BackendConfig, Timeouts
from langchain_contextharbor.testing import OllamaStandIn

MODEL = "llama3.2:1b"
EMBED = "nomic-embed-text"
CPU_ONLY = "qwen2.5:0.5b"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Proxy:
    url: str
    app: Any
    server: Any
    thread: threading.Thread

    @property
    def state(self) -> Any:
        return self.app.state.contextharbor

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def start_proxy(app: Any, host: str = "127.0.0.1") -> Proxy:
    port = free_port()
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="contextharbor-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the proxy did not start")
        time.sleep(0.01)
    return Proxy(f"http://{host}:{port}", app, server, thread)


def backends_for(gpu: OllamaStandIn, cpu: OllamaStandIn) -> list[BackendConfig]:
    t = Timeouts(connect=10.0, first_token=30.0, idle=30.0, probe=10.0)
    return [
        BackendConfig(name="gpu", base_url=gpu.url, kind="gpu", timeouts=t),
        BackendConfig(name="cpu", base_url=cpu.url, kind="cpu", timeouts=t),
    ]
