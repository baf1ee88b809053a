"""The main demo: one chat model over a GPU and a CPU Ollama server, with failover.

Run it with ``make demo``. If Ollama servers answer at ``OLLAMA_GPU_URL`` /
``OLLAMA_CPU_URL`` (default 127.0.0.1:11434 and :11435), the demo routes real calls to them,
with the model in ``CONTEXTHARBOR_EXAMPLE_MODEL`` (the variable every example reads) or the
first one listed that can chat (``/api/show`` capabilities). Otherwise it starts two embedded
Ollama stand-ins on loopback — serving SmolLM2-135M through llama.cpp when that engine is
installed (real tokens), a scripted engine otherwise — and also shows a failover by stopping
the "GPU" server in the middle of the run.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from _servers import MODEL_ENV, chat_model, live_urls
from pydantic import BaseModel, Field

from langchain_contextharbor import (
    BackendConfig,
    HybridChatOllama,
    Timeouts,
)
from langchain_contextharbor.testing import (
    LlamaCppEngine,
    OllamaStandIn,
    ScriptedEngine,
    llama_cpp_available,
    smollm2_gguf_path,
)


def say(title: str) -> None:
    print(f"\n=== {title} " + "=" * max(0, 70 - len(title)))


@contextlib.contextmanager
def embedded_servers() -> Iterator[tuple[OllamaStandIn, OllamaStandIn, str, bool]]:
    """Two stand-ins on ephemeral loopback ports: a "GPU" and a "CPU" server."""
    if llama_cpp_available() and smollm2_gguf_path() is not None:
        engine = LlamaCppEngine(system_prompt="Answer in one short sentence.")
        model = engine.model_spec()
        real = True
    else:
        engine = None
        model = None
        real = False
    if real:
        assert model is not None
        gpu = OllamaStandIn(name="gpu", models=[model], engine=engine, gpu_fraction=1.0)
        cpu = OllamaStandIn(name="cpu", models=[model], engine=engine, gpu_fraction=0.0)
        name = model.name
    else:
        gpu = OllamaStandIn(name="gpu", models=["llama3.2:1b"], engine=ScriptedEngine())
        cpu = OllamaStandIn(
            name="cpu", models=["llama3.2:1b"], engine=ScriptedEngine(), gpu_fraction=0.0
        )
        name = "llama3.2:1b"
    with gpu, cpu:
        yield gpu, cpu, name, real


def run_on(llm: HybridChatOllama, question: str) -> None:
    say("routing plan (refreshed from /api/tags, /api/ps and NVML)")
    llm.refresh()
    print(llm.select_backend().explain())

    say("invoke")
    msg = llm.invoke(question)
    print(f"Q: {question}\nA: {msg.content}")
    print(f"served by: {msg.response_metadata['backend']}  usage: {msg.usage_metadata}")

    say("stream")
    first = True
    for chunk in llm.stream(question):
        if first and chunk.response_metadata.get("backend"):
            print(f"[backend {chunk.response_metadata['backend']}] ", end="")
            first = False
        print(chunk.content, end="", flush=True)
    print()


def demo_failover(llm: HybridChatOllama, gpu: OllamaStandIn, question: str) -> None:
    say("failover: the GPU server goes down")
    gpu.stop()
    print(f"stopped {gpu.name} at {gpu.url}")
    for chunk in llm.stream(question):
        meta = chunk.response_metadata.get("contextharbor")
        if meta:
            tried = (
                ", ".join(
                    f"{a['backend']} ({a['category']}: {a['error_class']})"
                    for a in meta["attempts"]
                )
                or "nothing"
            )
            print(f"[served by {meta['backend']} after trying {tried}] ", end="")
        print(chunk.content, end="", flush=True)
    print()
    msg = llm.invoke(question)
    print(
        f"next call: served by {msg.response_metadata['backend']}, attempts "
        f"{msg.response_metadata['contextharbor']['attempts']} (the GPU's circuit is open: "
        "it costs nothing until its trial call)"
    )
    gpu.start()
    print(
        f"restarted {gpu.name}; it gets traffic again after the breaker cooldown "
        f"({llm.breaker.cooldown:.0f} s)"
    )


def demo_tools(gpu: OllamaStandIn, cpu: OllamaStandIn) -> None:
    """Tools and structured output need a model that calls tools: the scripted engine."""
    from langchain_core.tools import tool

    @tool
    def get_weather(city: str) -> str:
        """Current weather for a city."""
        return f"sunny in {city}"

    class Answer(BaseModel):
        city: str = Field(description="the city")
        country: str = Field(description="its country")

    with (
        OllamaStandIn(name="gpu-tools", models=["llama3.2:1b"]) as g2,
        OllamaStandIn(name="cpu-tools", models=["llama3.2:1b"], gpu_fraction=0.0) as c2,
    ):
        llm = HybridChatOllama(
            model="llama3.2:1b",
            backends=[
                BackendConfig(name="gpu", base_url=g2.url),
                BackendConfig(name="cpu", kind="cpu", base_url=c2.url),
            ],
        )
        say("tools (scripted engine)")
        msg = llm.bind_tools([get_weather]).invoke("What is the weather in Paris?")
        print(f"tool calls: {msg.tool_calls}  (backend {msg.response_metadata['backend']})")
        say("structured output (scripted engine, JSON schema as Ollama's format)")
        print(llm.with_structured_output(Answer).invoke("Where is the Eiffel tower?"))
        llm.close()


def main() -> int:
    live = live_urls()
    question = "What is the capital of France?"
    if live:
        model = chat_model(live[0])
        if not model:
            print(
                f"Ollama answers at {', '.join(live)} but lists no model that can chat "
                f"(/api/show capabilities); run `ollama pull llama3.2:1b` or set {MODEL_ENV}."
            )
            return 1
        say(f"live Ollama servers found: {', '.join(live)}; model {model}")
        llm = HybridChatOllama(model=model)
        run_on(llm, question)
        say("stats")
        print(llm.stats())
        llm.close()
        return 0

    with embedded_servers() as (gpu, cpu, model, real):
        engine = "SmolLM2-135M on llama.cpp (real tokens)" if real else "the scripted engine"
        say(f"no Ollama answers: embedded stand-ins with {engine}")
        print(f"gpu: {gpu.url}   cpu: {cpu.url}   model: {model}")
        llm = HybridChatOllama(
            model=model,
            temperature=0,
            seed=1,
            backends=[
                BackendConfig(name="gpu", base_url=gpu.url, kind="gpu"),
                BackendConfig(name="cpu", base_url=cpu.url, kind="cpu"),
            ],
            timeouts=Timeouts(first_token=60, idle=30),
        )
        run_on(llm, question)
        demo_failover(llm, gpu, question)
        say("stats")
        for name, s in llm.stats().items():
            print(
                f"{name}: requests {s['requests']}, successes {s['successes']}, failures "
                f"{s['failures']}, fallbacks {s['fallbacks']}, circuit {s['circuit']}"
            )
        llm.close()
        demo_tools(gpu, cpu)
    return 0


if __name__ == "__main__":
    sys.exit(main())
