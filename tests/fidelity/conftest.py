"""Stand-ins for the fidelity tests: the same cases through clients nobody here wrote.

``target`` is one running stand-in per engine (the scripted engine; SmolLM2 on llama.cpp
for tests that also run where the ``llama`` marker allows), shared by a test module, with
the model names and facts a case needs. Each client module (ollama-python, ollama-js,
LiteLLM) asks the same questions of it: chat, stream, tools, structured output, embed,
tags/ps/show, a missing model.
"""

from __future__ import annotations

import pytest
from fidelitykit import Target

from langchain_contextharbor.testing import StandInModel
from langchain_contextharbor.testing.pytest_plugin import StandInFactory


@pytest.fixture(scope="module", params=["scripted", pytest.param("llama", marks=pytest.mark.llama)])
def target(request: pytest.FixtureRequest, ollama_standin_module_factory: StandInFactory) -> Target:
    """The stand-in under test, once with each engine."""
    if request.param == "scripted":
        srv = ollama_standin_module_factory(
            name="fidelity", models=["llama3.2:1b", StandInModel("nomic-embed-text")]
        )
        return Target("scripted", srv, "llama3.2:1b", "nomic-embed-text", 768, tools=True)
    engine = request.getfixturevalue("llama_cpp_engine")
    spec = engine.model_spec()
    srv = ollama_standin_module_factory(name="fidelity", models=[spec], engine=engine)
    return Target("llama", srv, spec.name, spec.name, 576, tools=False)
