"""Tools and structured output for the chat model: what ``bind_tools`` and
``with_structured_output`` bind, and the parser that reads the answer.

Why apart from the model: none of it depends on routing. A tool list is converted once and
sent unchanged to whichever backend serves, and the three structured-output methods bind
what ``ChatOllama`` binds (``format`` or one tool), so a backend change never changes the
request. The methods of :class:`~langchain_contextharbor.HybridChatOllama` call these
functions with themselves as ``llm``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Literal, cast

from langchain_core.output_parsers import JsonOutputKeyToolsParser, JsonOutputParser
from langchain_core.output_parsers.openai_tools import PydanticToolsParser
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import BaseModel
from typing_extensions import is_typeddict

if TYPE_CHECKING:
    from langchain_core.language_models import LanguageModelInput
    from langchain_core.language_models.chat_models import BaseChatModel

__all__ = ["structured_output", "tools_for_choice"]

Method = Literal["function_calling", "json_mode", "json_schema"]


def tools_for_choice(
    tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
    tool_choice: dict[str, Any] | str | bool | None,
) -> list[dict[str, Any]]:
    """The OpenAI-format tools to send for ``tool_choice``, as far as Ollama allows (it has
    no ``tool_choice``): ``"none"``/False none, a name (or ``{"function": {"name": ...}}``)
    only that tool, ``"auto"``/``"any"``/``"required"``/True/None all of them."""
    formatted = [convert_to_openai_tool(t) for t in tools]
    names = [t["function"]["name"] for t in formatted]
    chosen: str | None = None
    if isinstance(tool_choice, dict):
        chosen = (tool_choice.get("function") or {}).get("name") or tool_choice.get("name")
    elif isinstance(tool_choice, str) and tool_choice not in (
        "auto",
        "any",
        "required",
        "none",
    ):
        chosen = tool_choice
    if tool_choice in ("none", False):
        formatted = []
    elif chosen is not None:
        if chosen not in names:
            raise ValueError(f"tool_choice {chosen!r} is not one of the bound tools {names}")
        formatted = [t for t in formatted if t["function"]["name"] == chosen]
    return formatted


def structured_output(
    llm: BaseChatModel,
    schema: dict[str, Any] | type | None,
    *,
    method: Method,
    include_raw: bool,
    **kwargs: Any,
) -> Runnable[LanguageModelInput, dict[str, Any] | BaseModel]:
    """``llm`` bound for ``method`` and piped into the parser of ``schema`` (with
    ``include_raw``: the raw message beside the parsed value, or the parsing error)."""
    kwargs.pop("strict", None)  # Ollama's format is always enforced; nothing to relax
    if kwargs:
        raise ValueError(f"unsupported arguments: {sorted(kwargs)}")
    is_pydantic = isinstance(schema, type) and is_basemodel_subclass(schema)
    parser: Runnable[Any, Any]
    if method == "function_calling":
        if schema is None:
            raise ValueError("schema is required for method='function_calling'")
        tool = convert_to_openai_tool(schema)
        name = tool["function"]["name"]
        bound = llm.bind_tools(
            [schema],
            tool_choice=name,
            ls_structured_output_format={"kwargs": {"method": method}, "schema": tool},
        )
        if is_pydantic:
            parser = PydanticToolsParser(tools=[cast(Any, schema)], first_tool_only=True)
        else:
            parser = JsonOutputKeyToolsParser(key_name=name, first_tool_only=True)
    elif method == "json_mode":
        bound = llm.bind(
            format="json",
            ls_structured_output_format={"kwargs": {"method": method}, "schema": schema},
        )
        parser = _pydantic_parser(schema) if is_pydantic else JsonOutputParser()
    elif method == "json_schema":
        if schema is None:
            raise ValueError("schema is required for method='json_schema'")
        # The same ``format`` ChatOllama sends: a TypedDict gets "required" (without it,
        # grammar-constrained decoding may leave fields out), a dict goes as it is.
        json_schema: dict[str, Any]
        if is_pydantic:
            model_cls = cast(Any, schema)
            json_schema = (
                model_cls.model_json_schema()
                if hasattr(model_cls, "model_json_schema")
                else model_cls.schema()
            )
        elif is_typeddict(schema):
            json_schema = convert_to_json_schema(schema)
            if "required" not in json_schema:
                json_schema["required"] = list(json_schema.get("properties", {}))
        elif isinstance(schema, dict):
            json_schema = schema
        else:
            json_schema = convert_to_json_schema(schema)
        bound = llm.bind(
            format=json_schema,
            ls_structured_output_format={
                "kwargs": {"method": method},
                "schema": schema if is_pydantic else json_schema,
            },
        )
        parser = _pydantic_parser(schema) if is_pydantic else JsonOutputParser()
    else:
        raise ValueError(
            f"unknown method {method!r}; use json_schema, function_calling or json_mode"
        )
    if not include_raw:
        return bound | parser
    parser_assign = RunnablePassthrough.assign(
        parsed=itemgetter("raw") | parser, parsing_error=lambda _: None
    )
    parser_none = RunnablePassthrough.assign(parsed=lambda _: None)
    with_fallback = parser_assign.with_fallbacks([parser_none], exception_key="parsing_error")
    return RunnableMap(raw=bound) | with_fallback


def _pydantic_parser(schema: Any) -> Runnable[Any, Any]:
    from langchain_core.output_parsers import PydanticOutputParser

    return PydanticOutputParser(pydantic_object=schema)
