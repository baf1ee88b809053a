"""RAG with a real model: SmolLM2-135M on llama.cpp embeds (mean-pooled) and answers.

Skipped with the reason when llama-cpp-python or the GGUF is missing (``llama`` marker).
"""

from __future__ import annotations

import math

import ollama
import pytest
from langchain_core.vectorstores import InMemoryVectorStore
from ragkit import backends_for
from test_rag_chain import CORPUS, QUESTION, format_docs

from langchain_contextharbor import HybridChatOllama, HybridOllamaEmbeddings, Timeouts
from langchain_contextharbor.testing import LlamaCppEngine, OllamaStandIn
from langchain_contextharbor.testing.clock import FakeClock
from langchain_contextharbor.testing.engines import embed_text
from langchain_contextharbor.testing.llama_engine import SMOLLM2_MODEL_NAME
from langchain_contextharbor.testing.pytest_plugin import StandInFactory

pytestmark = pytest.mark.llama

# A real model on a shared 2-core machine: generous deadlines (they are bounds, not waits).
SLOW = Timeouts(connect=1.0, first_token=120.0, idle=60.0, probe=2.0)


@pytest.fixture
def llama_pair(
    ollama_standin_factory: StandInFactory, llama_cpp_engine: LlamaCppEngine
) -> tuple[OllamaStandIn, OllamaStandIn]:
    spec = llama_cpp_engine.model_spec()
    gpu = ollama_standin_factory(name="gpu", models=[spec], engine=llama_cpp_engine)
    cpu = ollama_standin_factory(
        name="cpu", models=[spec], engine=llama_cpp_engine, gpu_fraction=0.0
    )
    return gpu, cpu


def test_real_embeddings_are_pooled_normalised_and_meaningful(
    llama_pair: tuple[OllamaStandIn, OllamaStandIn],
) -> None:
    gpu, _ = llama_pair
    texts = ["Cats purr when they are content.", "Why do cats purr?", "Stocks fell on Tuesday."]
    vecs = ollama.Client(host=gpu.url).embed(model=SMOLLM2_MODEL_NAME, input=texts).embeddings
    assert [len(v) for v in vecs] == [576, 576, 576]  # SmolLM2-135M's hidden size
    assert all(math.isclose(math.sqrt(sum(x * x for x in v)), 1.0, rel_tol=1e-6) for v in vecs)
    cos = [sum(a * b for a, b in zip(vecs[1], v, strict=True)) for v in (vecs[0], vecs[2])]
    assert cos[0] > cos[1]  # the question is nearer the cat sentence than the stock one
    spec = gpu.get_model(SMOLLM2_MODEL_NAME)
    assert spec is not None
    assert list(vecs[0]) != embed_text(spec.digest, texts[0], 576)  # not the scripted ones


def test_rag_chain_retrieves_with_real_embeddings_and_survives_the_gpu(
    llama_pair: tuple[OllamaStandIn, OllamaStandIn],
) -> None:
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_core.runnables import RunnablePassthrough

    gpu, cpu = llama_pair
    llm = HybridChatOllama(
        model=SMOLLM2_MODEL_NAME,
        backends=backends_for(gpu, cpu, SLOW),
        clock=FakeClock(),
        background_probes=False,
        temperature=0,
        seed=1,
        num_predict=24,
    )
    emb = HybridOllamaEmbeddings.from_chat_model(llm, model=SMOLLM2_MODEL_NAME)
    store = InMemoryVectorStore(embedding=emb)
    store.add_texts(CORPUS)
    retriever = store.as_retriever(search_kwargs={"k": 1})
    assert [d.page_content for d in retriever.invoke(QUESTION)] == [CORPUS[0]]
    gpu.stop()
    prompt = ChatPromptTemplate.from_messages(
        [("human", "Context: {context}\nQuestion: {question}\nAnswer in a few words.")]
    )
    chain = (
        {"context": retriever | format_docs, "question": RunnablePassthrough()}
        | prompt
        | llm
        | StrOutputParser()
    )
    answer = "".join(chain.stream(QUESTION))
    assert answer.strip()  # real generated text, from the CPU server
    assert emb.last_batches[0].backend == "cpu"
    assert cpu.requests_to("/api/chat")[-1].body["messages"][0]["content"].count(CORPUS[0]) == 1
    llm.close()
