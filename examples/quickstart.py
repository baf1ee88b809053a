"""Quickstart: one chat model over a GPU and a CPU Ollama server.

python examples/quickstart.py
"""

from _servers import servers

from langchain_contextharbor import HybridChatOllama

with servers() as s:
    # With backends=None the model reads OLLAMA_GPU_URL / OLLAMA_CPU_URL; no I/O happens here.
    llm = HybridChatOllama(model=s.model, backends=s.backends, temperature=0)

    msg = llm.invoke("Why is the sky blue? One sentence.")
    print("answer:", msg.content)
    print("served by:", msg.response_metadata["backend"])  # "gpu" or "cpu"
    print("route:", msg.response_metadata["contextharbor"]["route"])

    # Where a call would go now, and why (pure: planned on what the router already knows).
    print(llm.select_backend().explain())
    llm.close()
