"""Your own failover test, against real HTTP: the stand-in fixtures of the pytest plugin.

Installing langchain-contextharbor registers the ``contextharbor`` pytest plugin, so these
fixtures need no conftest.py. Run it with either of

    python -m pytest examples/own_failover_test.py
    python examples/own_failover_test.py

Real Ollama is never needed here: a test wants servers it can break on purpose.
"""

import subprocess
import sys

import pytest

from langchain_contextharbor import BackendConfig, HybridChatOllama, StreamInterruptedError
from langchain_contextharbor.testing import Fault


@pytest.fixture
def app(ollama_standin_factory):  # the fixture starts stand-ins and stops them after the test
    gpu = ollama_standin_factory(name="gpu")
    cpu = ollama_standin_factory(name="cpu", gpu_fraction=0.0)
    llm = HybridChatOllama(
        model="llama3.2:1b",
        backends=[
            BackendConfig(name="gpu", base_url=gpu.url),
            BackendConfig(name="cpu", base_url=cpu.url, kind="cpu"),
        ],
    )
    yield llm, gpu, cpu
    llm.close()


def test_a_gpu_out_of_memory_is_answered_by_the_cpu(app):
    llm, gpu, _ = app
    gpu.inject(Fault.OOM, count=1)  # Ollama's own out-of-memory error text, once
    msg = llm.invoke("hello")
    assert msg.response_metadata["backend"] == "cpu"
    assert msg.response_metadata["contextharbor"]["attempts"][0]["category"] == "out_of_memory"


def test_a_stream_cut_before_any_text_fails_over_invisibly(app):
    llm, gpu, _ = app
    gpu.inject(Fault.CUT_MID_STREAM, count=1, after_chunks=0)
    text = "".join(str(c.content) for c in llm.stream("tell me a story"))
    assert text  # the CPU's whole answer, nothing from the GPU spliced in


def test_a_stream_cut_after_text_says_so(app):
    llm, gpu, _ = app
    gpu.inject(Fault.CUT_MID_STREAM, count=1, after_chunks=2)
    with pytest.raises(StreamInterruptedError) as err:
        for _ in llm.stream("tell me a story"):
            pass
    assert err.value.backend == "gpu"


if __name__ == "__main__":  # run this file through pytest in a fresh interpreter
    sys.exit(
        subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__])
    )
