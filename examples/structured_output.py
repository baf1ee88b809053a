"""Structured output: a pydantic model filled by whichever server answers.

python examples/structured_output.py
"""

from _servers import servers
from pydantic import BaseModel, Field

from langchain_contextharbor import HybridChatOllama


class City(BaseModel):
    name: str = Field(description="the city")
    country: str = Field(description="the country it is in")


with servers() as s:
    llm = HybridChatOllama(model=s.model, backends=s.backends, temperature=0)
    # json_schema (the default) sends the schema as Ollama's `format`; with include_raw the
    # AIMessage comes back too, so the serving backend can be read.
    structured = llm.with_structured_output(City, include_raw=True)
    out = structured.invoke("Where is the Eiffel tower?")
    print("parsed:", out["parsed"])
    print("served by:", out["raw"].response_metadata["backend"])
    llm.close()
