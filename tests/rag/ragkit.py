"""Helpers shared by the RAG tests (a plain module: conftest files are not importable)."""

from __future__ import annotations

from langchain_contextharbor import BackendConfig, Timeouts
from langchain_contextharbor.testing import OllamaStandIn, StandInModel
from langchain_contextharbor.testing.pytest_plugin import StandInFactory

CHAT = "llama3.2:1b"
EMBED = "nomic-embed-text"
DIGEST_A = "a1" * 32
DIGEST_B = "b2" * 32
# Deadlines a loaded CI machine cannot run out of: a probe that timed out (0.5 s was enough on
# a busy 2-core machine) skips that server's digest check and moves the call elsewhere, so a
# test expecting the GPU to answer (or to give its own error) would see the CPU instead. A
# test that provokes a timeout sets a short deadline on the hung server only.
ROOMY = Timeouts(connect=10.0, first_token=30.0, idle=30.0, probe=10.0)


def make_pair(
    factory: StandInFactory, gpu_digest: str = DIGEST_A, cpu_digest: str = DIGEST_A
) -> tuple[OllamaStandIn, OllamaStandIn]:
    """A GPU and a CPU stand-in with the chat model and a given build of the embedder."""
    gpu = factory(name="gpu", models=[CHAT, StandInModel(EMBED, digest=gpu_digest)])
    cpu = factory(
        name="cpu", models=[CHAT, StandInModel(EMBED, digest=cpu_digest)], gpu_fraction=0.0
    )
    return gpu, cpu


def backends_for(
    gpu: OllamaStandIn, cpu: OllamaStandIn, timeouts: Timeouts = ROOMY
) -> list[BackendConfig]:
    return [
        BackendConfig(name="gpu", base_url=gpu.url, kind="gpu", timeouts=timeouts),
        BackendConfig(name="cpu", base_url=cpu.url, kind="cpu", timeouts=timeouts),
    ]
