"""OpenAI's chat and embeddings API, mapped onto Ollama's as Ollama's own compatibility
layer (``openai/openai.go``) maps it. Pure functions over plain values.

Why here and not forwarded to the backends' own ``/v1/...``: the stand-in the tests run
against serves only Ollama's native API, and mapping once at the edge keeps one routed
path (``/api/chat``, ``/api/embed``) for every client, with one commit gate. Differences
from Ollama's layer, on purpose: options the client did not set are not defaulted
(Ollama's layer used to send ``temperature: 1.0`` and friends); an error after the first
token is an SSE ``data: {"error": {...}}`` event (which the ``openai`` client raises as
``APIError``) rather than a bare JSON body.
"""

from __future__ import annotations

import base64
import json
import secrets
import struct
import time
from typing import Any

__all__ = [
    "chat_request",
    "chunk",
    "completion",
    "embed_request",
    "embeddings_response",
    "error",
    "models_list",
    "usage_chunk",
]


class OpenAIRequestError(ValueError):
    """A request the mapping cannot send (400 ``invalid_request_error``)."""


def error(status: int, message: str, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error body, typed as Ollama's layer types it."""
    etype = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
    if status in (401, 413):
        etype = "invalid_request_error"
    return {"error": {"message": message, "type": etype, "param": None, "code": code}}


def _content(content: Any) -> tuple[str, list[str]]:
    """Text and base64 images of one message's ``content`` (a string or a list of parts)."""
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise OpenAIRequestError("invalid message content type")
    texts: list[str] = []
    images: list[str] = []
    for part in content:
        if not isinstance(part, dict):
            raise OpenAIRequestError("invalid message format")
        kind = part.get("type")
        if kind == "text":
            texts.append(str(part.get("text", "")))
        elif kind == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            if not isinstance(url, str) or not url.startswith("data:") or "," not in url:
                raise OpenAIRequestError("invalid image input: only base64 data URLs are supported")
            images.append(url.split(",", 1)[1])
        else:
            raise OpenAIRequestError(f"invalid message part type: {kind!r}")
    return "\n".join(texts), images


def _tool_calls_in(calls: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, tc in enumerate(calls or []):
        fn = (tc or {}).get("function") or {}
        args = fn.get("arguments")
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except ValueError:
                raise OpenAIRequestError("invalid tool call arguments") from None
        entry: dict[str, Any] = {
            "function": {"index": i, "name": fn.get("name", ""), "arguments": args or {}}
        }
        if tc.get("id"):
            entry["id"] = tc["id"]
        out.append(entry)
    return out


def chat_request(req: Any) -> tuple[dict[str, Any], bool, bool]:
    """``/v1/chat/completions`` body -> (``/api/chat`` body, stream, include_usage)."""
    if not isinstance(req, dict):
        raise OpenAIRequestError("invalid request body")
    model = req.get("model")
    if not isinstance(model, str) or not model:
        raise OpenAIRequestError("model is required")
    messages = req.get("messages")
    if not isinstance(messages, list) or not messages:
        raise OpenAIRequestError("[] is too short - 'messages'")
    names: dict[str, str] = {}
    out_msgs: list[dict[str, Any]] = []
    for m in messages:
        if not isinstance(m, dict):
            raise OpenAIRequestError("invalid message format")
        role = str(m.get("role", "")).lower()
        if role == "developer":
            role = "system"
        text, images = _content(m.get("content"))
        msg: dict[str, Any] = {"role": role, "content": text}
        if images:
            msg["images"] = images
        reasoning = m.get("reasoning") or m.get("reasoning_content")
        if isinstance(reasoning, str) and reasoning:
            msg["thinking"] = reasoning
        if m.get("tool_calls"):
            msg["tool_calls"] = _tool_calls_in(m["tool_calls"])
            for tc in m["tool_calls"]:
                if isinstance(tc, dict) and tc.get("id"):
                    names[tc["id"]] = (tc.get("function") or {}).get("name", "")
        if role == "tool":
            call_id = m.get("tool_call_id")
            name = m.get("name") or (names.get(call_id) if isinstance(call_id, str) else None)
            if name:
                msg["tool_name"] = name
            if call_id:
                msg["tool_call_id"] = call_id
        out_msgs.append(msg)
    options: dict[str, Any] = {}
    for src, dst in (
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("seed", "seed"),
        ("frequency_penalty", "frequency_penalty"),
        ("presence_penalty", "presence_penalty"),
    ):
        if req.get(src) is not None:
            options[dst] = req[src]
    max_tokens = req.get("max_completion_tokens", req.get("max_tokens"))
    if max_tokens is not None:
        options["num_predict"] = max_tokens
    stop = req.get("stop")
    if isinstance(stop, str):
        options["stop"] = [stop]
    elif isinstance(stop, list):
        options["stop"] = stop
    body: dict[str, Any] = {"model": model, "messages": out_msgs, "options": options}
    stream = bool(req.get("stream", False))
    body["stream"] = stream
    fmt = req.get("response_format")
    if isinstance(fmt, dict):
        kind = fmt.get("type")
        if kind == "json_object":
            body["format"] = "json"
        elif kind == "json_schema":
            schema = (fmt.get("json_schema") or {}).get("schema")
            if isinstance(schema, dict):
                body["format"] = schema
    if req.get("tools"):
        body["tools"] = req["tools"]
    effort = req.get("reasoning_effort") or (req.get("reasoning") or {}).get("effort")
    if effort in ("low", "medium", "high"):
        body["think"] = effort
    elif effort == "none":
        body["think"] = False
    usage = bool((req.get("stream_options") or {}).get("include_usage"))
    return body, stream, usage


def _tool_calls_out(calls: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, tc in enumerate(calls or []):
        fn = tc.get("function") or {}
        out.append(
            {
                "id": tc.get("id") or f"call_{secrets.token_hex(4)}",
                "index": fn.get("index", i),
                "type": "function",
                "function": {
                    "name": fn.get("name", ""),
                    "arguments": json.dumps(fn.get("arguments") or {}),
                },
            }
        )
    return out


def _finish(data: dict[str, Any], tool_calls: bool) -> str | None:
    if tool_calls:
        return "tool_calls"
    if not data.get("done"):
        return None
    return "length" if data.get("done_reason") == "length" else "stop"


def _usage(data: dict[str, Any]) -> dict[str, int]:
    p, c = int(data.get("prompt_eval_count") or 0), int(data.get("eval_count") or 0)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def new_id() -> str:
    return f"chatcmpl-{secrets.randbelow(999)}"


def completion(data: dict[str, Any], cid: str, model: str) -> dict[str, Any]:
    """Ollama's non-streamed chat answer as a ``chat.completion``."""
    msg = data.get("message") or {}
    out_msg: dict[str, Any] = {"role": msg.get("role", "assistant"), "content": msg.get("content")}
    if msg.get("thinking"):
        out_msg["reasoning"] = msg["thinking"]
    calls = _tool_calls_out(msg.get("tool_calls"))
    if calls:
        out_msg["tool_calls"] = calls
    return {
        "id": cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_ollama",
        "choices": [{"index": 0, "message": out_msg, "finish_reason": _finish(data, bool(calls))}],
        "usage": _usage(data),
    }


def chunk(data: dict[str, Any], cid: str, model: str, created: int) -> dict[str, Any]:
    """One Ollama stream chunk as a ``chat.completion.chunk``."""
    msg = data.get("message") or {}
    delta: dict[str, Any] = {"role": "assistant", "content": msg.get("content") or ""}
    if msg.get("thinking"):
        delta["reasoning"] = msg["thinking"]
    calls = _tool_calls_out(msg.get("tool_calls"))
    if calls:
        delta["tool_calls"] = calls
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": "fp_ollama",
        # Only the last chunk says why the answer ended (the edge marks a tool-call answer).
        "choices": [
            {
                "index": 0,
                "delta": delta,
                "finish_reason": _finish(data, bool(calls)) if data.get("done") else None,
            }
        ],
    }


def usage_chunk(data: dict[str, Any], cid: str, model: str, created: int) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": "fp_ollama",
        "choices": [],
        "usage": _usage(data),
    }


def embed_request(req: Any) -> tuple[dict[str, Any], str]:
    """``/v1/embeddings`` body -> (``/api/embed`` body, encoding format)."""
    if not isinstance(req, dict):
        raise OpenAIRequestError("invalid request body")
    model = req.get("model")
    if not isinstance(model, str) or not model:
        raise OpenAIRequestError("model is required")
    inp = req.get("input")
    if inp is None or inp == "" or inp == []:
        raise OpenAIRequestError("invalid input")
    if isinstance(inp, list) and inp and not all(isinstance(x, str) for x in inp):
        raise OpenAIRequestError("invalid input type: only strings are supported")
    body: dict[str, Any] = {"model": model, "input": inp}
    if req.get("dimensions") is not None:
        body["dimensions"] = req["dimensions"]
    fmt = req.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise OpenAIRequestError(f"invalid encoding format: {fmt!r} (use 'float' or 'base64')")
    return body, fmt


def embeddings_response(data: dict[str, Any], model: str, fmt: str) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for i, vec in enumerate(data.get("embeddings") or []):
        value: Any = vec
        if fmt == "base64":
            value = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()
        rows.append({"object": "embedding", "embedding": value, "index": i})
    n = int(data.get("prompt_eval_count") or 0)
    return {
        "object": "list",
        "data": rows,
        "model": model,
        "usage": {"prompt_tokens": n, "total_tokens": n},
    }


def _created(stamp: Any) -> int:
    from datetime import datetime

    if not isinstance(stamp, str):
        return 0
    text = stamp.replace("Z", "+00:00")
    head, dot, tail = text.partition(".")
    if dot:  # Go's nanoseconds: Python takes at most six digits
        digits = "".join(ch for ch in tail if ch.isdigit())
        tail = tail[len(digits) :]
        text = f"{head}.{digits[:6]}{tail}"
    try:
        return int(datetime.fromisoformat(text).timestamp())
    except ValueError:
        return 0


def model_entry(entry: dict[str, Any]) -> dict[str, Any]:
    name = str(entry.get("model") or entry.get("name") or "")
    owner = name.split("/")[0] if "/" in name else "library"
    return {
        "id": name,
        "object": "model",
        "created": _created(entry.get("modified_at")),
        "owned_by": owner,
    }


def models_list(tags: list[dict[str, Any]]) -> dict[str, Any]:
    return {"object": "list", "data": [model_entry(t) for t in tags]}
