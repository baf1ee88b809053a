"""An LCEL RAG chain over HybridChatOllama + HybridOllamaEmbeddings, end to end over HTTP.

The scripted engine repeats its prompt ("... You said: <prompt>"), and the prompt carries
the retrieved context, so the answer shows which document was retrieved: the answer to the
question is in one document only, and only k=1 document reaches the model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from langchain_core.documents import Document
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable, RunnableLambda, RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore
from ragkit import CHAT, DIGEST_B, EMBED, backends_for, make_pair

from langchain_contextharbor import (
    EmbeddingDigestMismatchError,
    HybridChatOllama,
    HybridOllamaEmbeddings,
)
from langchain_contextharbor.testing import OllamaStandIn
from langchain_contextharbor.testing.clock import FakeClock
from langchain_contextharbor.testing.pytest_plugin import StandInFactory

CORPUS = [
    "The lighthouse keeper of Skerry Point is Ingrid Solberg, who has kept the light since 1998.",
    "Harbor ferries leave the north pier every hour on the half hour, weather permitting.",
    "Copper conducts electricity better than iron and is used for most household wiring.",
    "The old fish market closes at noon on Sundays and reopens on Monday at dawn.",
    "Sourdough bread rises slowly because wild yeast ferments the dough overnight.",
]
QUESTION = "Who is the lighthouse keeper of Skerry Point?"
ANSWER = "Ingrid Solberg"
OTHER_FACTS = ["north pier", "household wiring", "fish market", "wild yeast"]


def format_docs(docs: list[Document]) -> str:
    return "\n".join(d.page_content for d in docs)


def build(
    gpu: OllamaStandIn, cpu: OllamaStandIn, clock: FakeClock, between: Callable[[str], str] = str
) -> tuple[Runnable[str, str], HybridChatOllama, HybridOllamaEmbeddings]:
    llm = HybridChatOllama(
        model=CHAT, backends=backends_for(gpu, cpu), clock=clock, background_probes=False
    )
    emb = HybridOllamaEmbeddings.from_chat_model(llm, model=EMBED)
    store = InMemoryVectorStore(embedding=emb)
    store.add_texts(CORPUS)
    retriever = store.as_retriever(search_kwargs={"k": 1})
    prompt = ChatPromptTemplate.from_messages(
        [
            ("system", "Answer the question from the context only."),
            ("human", "Context:\n{context}\n\nQuestion: {question}"),
        ]
    )
    chain: Runnable[str, str] = (
        {
            "context": retriever | format_docs | RunnableLambda(between),
            "question": RunnablePassthrough(),
        }
        | prompt
        | llm
        | StrOutputParser()
    )
    return chain, llm, emb


def assert_answers_from_the_right_document(answer: str, served_by: str) -> None:
    assert answer.startswith(f"Hello from {served_by} ({CHAT})")
    assert ANSWER in answer
    assert not any(fact in answer for fact in OTHER_FACTS)


def test_answers_from_the_one_document_that_holds_the_answer(
    pair: tuple[OllamaStandIn, OllamaStandIn], clock: FakeClock
) -> None:
    gpu, cpu = pair
    chain, llm, emb = build(gpu, cpu, clock)
    assert_answers_from_the_right_document(chain.invoke(QUESTION), "gpu")
    assert {b.backend for b in emb.last_batches} == {"gpu"}
    assert emb.shared_router is llm.router  # one health cache and breaker set for both
    llm.close()


def test_still_answers_streaming_with_the_gpu_stopped_after_indexing(
    pair: tuple[OllamaStandIn, OllamaStandIn], clock: FakeClock
) -> None:
    gpu, cpu = pair
    chain, llm, emb = build(gpu, cpu, clock)
    gpu.stop()
    chunks = list(chain.stream(QUESTION))
    assert len(chunks) > 3  # streamed, token by token
    assert_answers_from_the_right_document("".join(chunks), "cpu")
    assert emb.last_batches[0].backend == "cpu"  # the query was embedded on the CPU
    llm.close()


async def test_still_answers_with_the_gpu_stopped_mid_query(
    pair: tuple[OllamaStandIn, OllamaStandIn], clock: FakeClock
) -> None:
    gpu, cpu = pair

    def gpu_dies(context: str) -> str:  # after retrieval, before the model is asked
        gpu.stop()
        return context

    chain, llm, emb = build(gpu, cpu, clock, between=gpu_dies)
    chunks = [c async for c in chain.astream(QUESTION)]
    assert_answers_from_the_right_document("".join(chunks), "cpu")
    assert emb.last_batches[0].backend == "gpu"  # retrieval ran on the GPU, then it died
    llm.close()


def test_refuses_when_the_cpu_holds_another_build_of_the_embedder(
    ollama_standin_factory: StandInFactory, clock: FakeClock
) -> None:
    gpu, cpu = make_pair(ollama_standin_factory, cpu_digest=DIGEST_B)
    chain, llm, _ = build(gpu, cpu, clock)
    gpu.stop()
    with pytest.raises(EmbeddingDigestMismatchError, match="pull the same build") as info:
        chain.invoke(QUESTION)
    assert info.value.found == {"cpu": DIGEST_B}
    assert cpu.requests_to("/api/embed") == [] and cpu.requests_to("/api/chat") == []
    llm.close()


def test_the_store_rejects_nothing_silently_with_plain_ollama_embeddings_pointed_elsewhere(
    ollama_standin_factory: StandInFactory,
) -> None:
    """The failure this class exists for: another build answers, and retrieval goes wrong."""
    from langchain_ollama import OllamaEmbeddings

    gpu, cpu = make_pair(ollama_standin_factory, cpu_digest=DIGEST_B)
    store = InMemoryVectorStore(embedding=OllamaEmbeddings(model=EMBED, base_url=gpu.url))
    store.add_texts(CORPUS)
    store.embedding = OllamaEmbeddings(model=EMBED, base_url=cpu.url)  # "fail over" by hand
    hits: list[Any] = store.similarity_search_with_score(QUESTION, k=len(CORPUS))
    assert max(score for _, score in hits) < 0.3  # nothing is near any more, and no error
