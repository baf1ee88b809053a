"""Streaming, sync and async. The first chunk's metadata names the server that answers.

python examples/streaming.py
"""

import asyncio

from _servers import servers

from langchain_contextharbor import HybridChatOllama


def stream_sync(llm: HybridChatOllama) -> None:
    for chunk in llm.stream("Count from one to five."):
        backend = chunk.response_metadata.get("backend")
        if backend:  # set on the first chunk
            print(f"[sync, served by {backend}] ", end="")
        print(chunk.content, end="", flush=True)
    print()


async def stream_async(llm: HybridChatOllama) -> None:
    async for chunk in llm.astream("Name three colours."):
        backend = chunk.response_metadata.get("backend")
        if backend:
            print(f"[async, served by {backend}] ", end="")
        print(chunk.content, end="", flush=True)
    print()


with servers() as s:
    llm = HybridChatOllama(model=s.model, backends=s.backends)
    stream_sync(llm)
    asyncio.run(stream_async(llm))
    asyncio.run(stream_async(llm))  # a second event loop works too
    llm.close()
