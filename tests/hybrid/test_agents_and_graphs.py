"""HybridChatOllama inside create_agent and a LangGraph graph, while the GPU goes away and back."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from langchain.agents import create_agent
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from langchain_contextharbor import HybridChatOllama
from langchain_contextharbor.testing import OllamaStandIn
from langchain_contextharbor.testing.clock import FakeClock

CALLS: list[str] = []


@tool
def get_weather(city: str) -> str:
    """Get the current weather for a city."""
    CALLS.append(city)
    return f"It is sunny in {city}."


def _ai_backends(messages: list[Any]) -> list[str]:
    return [m.response_metadata["backend"] for m in messages if isinstance(m, AIMessage)]


def test_create_agent_survives_gpu_stop_and_restart(
    pair: tuple[OllamaStandIn, OllamaStandIn],
    make_model: Callable[..., HybridChatOllama],
    clock: FakeClock,
) -> None:
    gpu, _ = pair
    model = make_model()
    agent = create_agent(model, tools=[get_weather])
    CALLS.clear()

    out = agent.invoke({"messages": [HumanMessage("What is the weather in Paris?")]})
    msgs = out["messages"]
    assert any(isinstance(m, ToolMessage) for m in msgs) and CALLS
    assert _ai_backends(msgs) == ["gpu", "gpu"]

    gpu.stop()
    out = agent.invoke({"messages": [HumanMessage("What is the weather in Oslo?")]})
    assert _ai_backends(out["messages"]) == ["cpu", "cpu"]
    assert isinstance(out["messages"][-1], AIMessage) and out["messages"][-1].content

    gpu.start()
    clock.advance(model.breaker.cooldown + 1)
    # The gpu's trial call runs in the background (the call that triggers it goes to the
    # cpu at no cost); once it succeeded the gpu serves again.
    assert model.invoke("trigger").response_metadata["backend"] == "cpu"
    assert model.router.trial_futures["gpu"].result(timeout=30) is True
    out = agent.invoke({"messages": [HumanMessage("What is the weather in Rome?")]})
    assert _ai_backends(out["messages"]) == ["gpu", "gpu"]


async def test_langgraph_tool_loop_streams_while_gpu_is_down(
    pair: tuple[OllamaStandIn, OllamaStandIn],
    make_model: Callable[..., HybridChatOllama],
) -> None:
    gpu, _ = pair
    llm = make_model().bind_tools([get_weather])

    async def call_model(state: MessagesState) -> dict[str, Any]:
        return {"messages": [await llm.ainvoke(state["messages"])]}

    g = StateGraph(MessagesState)
    g.add_node("model", call_model)
    g.add_node("tools", ToolNode([get_weather]))
    g.add_edge(START, "model")
    g.add_conditional_edges("model", tools_condition)
    g.add_edge("tools", "model")
    graph = g.compile()

    gpu.stop()
    tokens: list[str] = []
    async for chunk, _meta in graph.astream(
        {"messages": [HumanMessage("Weather in Lima?")]}, stream_mode="messages"
    ):
        if isinstance(chunk, AIMessageChunk) and chunk.content:
            tokens.append(str(chunk.content))
    final = await graph.ainvoke({"messages": [HumanMessage("Weather in Lima?")]})
    assert _ai_backends(final["messages"]) == ["cpu", "cpu"]
    # The final answer streamed token by token from the CPU (it mentions the tool result).
    assert len(tokens) > 3 and "Lima" in "".join(tokens)
