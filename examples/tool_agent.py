"""A LangChain agent (create_agent) with two tools on HybridChatOllama.

python examples/tool_agent.py
"""

from _servers import servers
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import tool

from langchain_contextharbor import HybridChatOllama


@tool
def get_weather(city: str) -> str:
    """Current weather for a city."""
    return f"sunny, 21 C in {city}"


@tool
def get_time(city: str) -> str:
    """Current local time in a city."""
    return f"10:30 in {city}"


with servers(needs=("completion", "tools")) as s:
    llm = HybridChatOllama(model=s.model, backends=s.backends, temperature=0)
    agent = create_agent(llm, tools=[get_weather, get_time])
    for question in ("What is the weather in Paris?", "What time is it in Tokyo?"):
        result = agent.invoke({"messages": [("user", question)]})
        for m in result["messages"]:
            if isinstance(m, ToolMessage):
                print(f"  tool {m.name} -> {m.content}")
            elif isinstance(m, AIMessage) and m.content:
                print(f"  answer ({m.response_metadata['backend']}): {m.content}")
    llm.close()
