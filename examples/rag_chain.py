"""A RAG chain over a GPU and a CPU Ollama server: retrieval and answer both fail over.

Run it with ``python examples/rag_chain.py``. If Ollama answers at ``OLLAMA_GPU_URL`` /
``OLLAMA_CPU_URL`` (default 127.0.0.1:11434 and :11435), the chain runs on those servers
(chat model: ``CONTEXTHARBOR_EXAMPLE_MODEL`` or the first one listed that can chat;
embedding model: ``CONTEXTHARBOR_EMBED_MODEL``, default ``nomic-embed-text``, which must be
pulled on each).
Otherwise it starts two embedded Ollama stand-ins on loopback: SmolLM2-135M on llama.cpp
when that engine is installed (real embeddings and real tokens), the scripted engine
otherwise (``CONTEXTHARBOR_RAG_ENGINE=scripted`` forces it) - and it also stops the "GPU"
server after indexing, and shows the refusal when a server holds another build of the
embedding model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from collections.abc import Iterator

from _servers import chat_model as pick_chat_model
from _servers import live_urls
from langchain_core.documents import Document
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable, RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore

from langchain_contextharbor import (
    BackendConfig,
    EmbeddingDigestMismatchError,
    HybridChatOllama,
    HybridOllamaEmbeddings,
    Timeouts,
)
from langchain_contextharbor.testing import (
    LlamaCppEngine,
    OllamaStandIn,
    StandInModel,
    llama_cpp_available,
    smollm2_gguf_path,
)

CORPUS = [
    "The lighthouse keeper of Skerry Point is Ingrid Solberg, who has kept the light since 1998.",
    "Harbor ferries leave the north pier every hour on the half hour, weather permitting.",
    "Copper conducts electricity better than iron and is used for most household wiring.",
    "The old fish market closes at noon on Sundays and reopens on Monday at dawn.",
]
QUESTION = "Who is the lighthouse keeper of Skerry Point?"


def say(title: str) -> None:
    print(f"\n=== {title} " + "=" * max(0, 70 - len(title)))


def build_chain(
    llm: HybridChatOllama, emb: HybridOllamaEmbeddings
) -> tuple[Runnable[str, str], InMemoryVectorStore]:
    store = InMemoryVectorStore(embedding=emb)
    store.add_texts(CORPUS)
    retriever = store.as_retriever(search_kwargs={"k": 1})

    def format_docs(docs: list[Document]) -> str:
        return "\n".join(d.page_content for d in docs)

    prompt = ChatPromptTemplate.from_messages(
        [
            ("system", "Answer the question from the context only, in one short sentence."),
            ("human", "Context:\n{context}\n\nQuestion: {question}"),
        ]
    )
    chain: Runnable[str, str] = (
        {"context": retriever | format_docs, "question": RunnablePassthrough()}
        | prompt
        | llm
        | StrOutputParser()
    )
    return chain, store


def ask(chain: Runnable[str, str], emb: HybridOllamaEmbeddings) -> None:
    print(f"Q: {QUESTION}\nA: ", end="")
    for piece in chain.stream(QUESTION):
        print(piece, end="", flush=True)
    print()
    served = ", ".join(f"{b.backend}" for b in emb.last_batches)
    print(f"(query embedded on: {served}; build {emb.digest and emb.digest[:12]})")


@contextlib.contextmanager
def embedded_servers() -> Iterator[tuple[OllamaStandIn, OllamaStandIn, str, str, bool]]:
    """Two stand-ins: (gpu, cpu, chat model, embedding model, real model?)."""
    forced = os.environ.get("CONTEXTHARBOR_RAG_ENGINE") == "scripted"
    if not forced and llama_cpp_available() and smollm2_gguf_path() is not None:
        engine = LlamaCppEngine()
        spec = engine.model_spec()
        gpu = OllamaStandIn(name="gpu", models=[spec], engine=engine)
        cpu = OllamaStandIn(name="cpu", models=[spec], engine=engine, gpu_fraction=0.0)
        chat = embed = spec.name
        real = True
    else:
        models: list[StandInModel | str] = ["llama3.2:1b", "nomic-embed-text"]
        gpu = OllamaStandIn(name="gpu", models=models)
        cpu = OllamaStandIn(name="cpu", models=models, gpu_fraction=0.0)
        chat, embed, real = "llama3.2:1b", "nomic-embed-text", False
    with gpu, cpu:
        yield gpu, cpu, chat, embed, real


def main() -> int:
    live = live_urls()
    if live:
        chat = pick_chat_model(live[0])
        embed_model = os.environ.get("CONTEXTHARBOR_EMBED_MODEL", "nomic-embed-text")
        if not chat:
            print(f"Ollama answers at {live} but has no chat model; `ollama pull llama3.2:1b`.")
            return 1
        print(f"Using real Ollama at {', '.join(live)} with model {chat}")
        say(f"chat model {chat}, embedding model {embed_model}")
        llm = HybridChatOllama(model=chat)
        emb = HybridOllamaEmbeddings.from_chat_model(llm, model=embed_model)
        chain, _ = build_chain(llm, emb)
        ask(chain, emb)
        print(f"store this build beside the index: expected_digest={emb.digest!r}")
        llm.close()
        return 0

    with embedded_servers() as (gpu, cpu, chat_model, embed_model, real):
        what = "SmolLM2-135M on llama.cpp (real embeddings)" if real else "the scripted engine"
        say(f"no Ollama answers: embedded stand-ins with {what}")
        backends = [
            BackendConfig(name="gpu", base_url=gpu.url, kind="gpu"),
            BackendConfig(name="cpu", base_url=cpu.url, kind="cpu"),
        ]
        llm = HybridChatOllama(
            model=chat_model,
            backends=backends,
            temperature=0,
            seed=1,
            num_predict=40,
            timeouts=Timeouts(first_token=120, idle=60),
        )
        emb = HybridOllamaEmbeddings.from_chat_model(llm, model=embed_model)
        chain, _ = build_chain(llm, emb)
        say("indexed 4 documents; ask")
        ask(chain, emb)

        say("the GPU server goes down after indexing: retrieval and answer move to the CPU")
        gpu.stop()
        ask(chain, emb)

        say("the CPU server's embedding model is re-pulled as another build")
        spec = cpu.get_model(embed_model)
        assert spec is not None
        cpu.add_model(dataclasses.replace(spec, digest="f" * 64))
        emb.shared_router.refresh()
        try:
            chain.invoke(QUESTION)
        except EmbeddingDigestMismatchError as exc:
            print(f"refused, as it should be:\n{exc}")
        llm.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
