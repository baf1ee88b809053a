"""A LangGraph graph: a model node and a tool node in a loop, on HybridChatOllama.

python examples/langgraph_agent.py
"""

from typing import Any

from _servers import servers
from langchain_core.messages import HumanMessage
from langchain_core.tools import tool
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from langchain_contextharbor import HybridChatOllama


@tool
def get_weather(city: str) -> str:
    """Current weather for a city."""
    return f"sunny in {city}"


with servers(needs=("completion", "tools")) as s:
    llm = HybridChatOllama(model=s.model, backends=s.backends, temperature=0)
    model = llm.bind_tools([get_weather])

    def call_model(state: MessagesState) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("model", call_model)
    graph.add_node("tools", ToolNode([get_weather]))
    graph.add_edge(START, "model")
    graph.add_conditional_edges("model", tools_condition)  # tools if asked, else the end
    graph.add_edge("tools", "model")
    app = graph.compile()

    out = app.invoke({"messages": [HumanMessage("What is the weather in Lima?")]})
    for m in out["messages"]:
        print(f"{m.type:>5}: {m.content or m.tool_calls}")  # type: ignore[attr-defined]
    llm.close()
