"""Failover you can see: the GPU server goes away between two calls.

With embedded stand-ins the "gpu" stand-in is stopped mid-run. With real Ollama the real
servers are left alone: a "gpu" backend on a port where nothing listens stands in for a
server that went down, and your real server is the fallback.

    python examples/failover.py
"""

import socket

from _servers import servers

from langchain_contextharbor import BackendConfig, HybridChatOllama


def dead_url() -> str:
    with socket.socket() as sock:  # a free port, closed again: connections are refused
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def show(label: str, llm: HybridChatOllama) -> None:
    meta = llm.invoke("Say hello.").response_metadata["contextharbor"]
    tried = [f"{a['backend']} ({a['category']}: {a['error_class']})" for a in meta["attempts"]]
    print(f"{label}: served by {meta['backend']}; failed attempts before it: {tried or 'none'}")


with servers() as s:
    if s.live:
        backends = [
            BackendConfig(name="gpu", base_url=dead_url(), kind="gpu"),
            BackendConfig(name="cpu", base_url=s.live_url, kind="cpu"),
        ]
    else:
        backends = s.backends
    llm = HybridChatOllama(model=s.model, backends=backends)
    show("call 1", llm)
    if not s.live:
        s.standins["gpu"].stop()
        print("-- stopped the gpu stand-in --")
    show("call 2", llm)  # the GPU is refused: the CPU answers in the same call
    show("call 3", llm)  # the GPU's circuit is open (or its probe saw it down): not tried
    for name, st in llm.stats().items():
        print(f"{name}: circuit {st['circuit']}, successes {st['successes']}", end="")
        print(f", failures {st['failures']}")
    llm.close()
