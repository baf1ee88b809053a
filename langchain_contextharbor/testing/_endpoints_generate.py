"""The stand-in's generation routes: ``/api/chat`` and ``/api/generate`` (loading,
``keep_alive``, ``num_parallel`` queueing, stop sequences, ``num_predict``, thinking,
tools, logprobs and the NDJSON chunk shapes). Gathered by :mod:`._endpoints`.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Iterator
from typing import Any

from langchain_contextharbor.testing._endpoints_base import (
    StandIn,
    _slot,
    _use_model,
)
from langchain_contextharbor.testing._exchange import _Exchange
from langchain_contextharbor.testing._requests import (
    _THINK_LEVELS,
    _StopFilter,
    _tool_call_id,
    _validate_options,
    check_top_logprobs,
    parse_keep_alive,
    version_at_least,
)
from langchain_contextharbor.testing._wire import _Aborted, _go_type, _RequestError
from langchain_contextharbor.testing.engines import (
    ChatTurn,
    DoneEvent,
    EngineEvent,
    TextToken,
    ThinkingToken,
    ToolCallEvent,
    count_words,
    split_tokens,
)
from langchain_contextharbor.testing.models import (
    StandInModel,
    qualified_model_name,
    rfc3339_nano,
)


# ---------------------------------------------------------------------------- chat / generate
def _h_api_chat(srv: StandIn, ex: _Exchange, body: dict[str, Any]) -> None:
    _complete(srv, ex, body, generate=False)


def _h_api_generate(srv: StandIn, ex: _Exchange, body: dict[str, Any]) -> None:
    _complete(srv, ex, body, generate=True)


def _complete(srv: StandIn, ex: _Exchange, body: dict[str, Any], *, generate: bool) -> None:
    t_start = time.perf_counter_ns()
    keep_alive = parse_keep_alive(body.get("keep_alive"))
    think_raw = body.get("think")
    if think_raw is not None and not isinstance(think_raw, bool):
        if not isinstance(think_raw, str) or think_raw not in _THINK_LEVELS:
            shown = json.dumps(think_raw) if not isinstance(think_raw, str) else think_raw
            raise _RequestError(
                400,
                f'invalid think value: "{shown}" (must be "high", "medium", "low", true, or false)',
            )
    # Checked before the model is looked up (and again after, in 0.14.3's handlers).
    with_logprobs = version_at_least(srv.config.version, 0, 12, 11)
    top_logprobs = 0
    if with_logprobs:
        top_logprobs = check_top_logprobs(body, "GenerateRequest" if generate else "ChatRequest")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _RequestError(400, "model is required")
    spec = srv.get_model(model)
    if spec is None:
        raise _RequestError(404, f"model '{model}' not found")

    raw = generate and body.get("raw") is True
    suffix = body.get("suffix") if generate else None
    if generate and not (not body.get("prompt") and keep_alive == 0):
        # GenerateHandler, after the unload shortcut and before scheduling: raw mode takes
        # the prompt verbatim, so nothing may be templated around it.
        if raw and (body.get("template") or body.get("system") or body.get("context")):
            raise _RequestError(400, "raw mode does not support template, system, or context")
        if suffix and not spec.has("insert") and spec.has("completion"):
            # scheduleRunner's CheckCapabilities, with the fully qualified name
            raise _RequestError(400, f"{qualified_model_name(model)} does not support insert")

    if generate:
        prompt = body.get("prompt") or ""
        if not isinstance(prompt, str):
            raise _RequestError(400, "json: cannot unmarshal into Go struct field prompt")
        messages: list[dict[str, Any]] = []
        system = body.get("system")
        if isinstance(system, str) and system:
            messages.append({"role": "system", "content": system})
        if prompt:
            messages.append({"role": "user", "content": prompt})
        empty = not prompt
    else:
        raw_messages = body.get("messages")
        if raw_messages is None:
            raw_messages = []
        if not isinstance(raw_messages, list) or not all(isinstance(m, dict) for m in raw_messages):
            raise _RequestError(
                400,
                f"json: cannot unmarshal {_go_type(raw_messages)} into Go struct field "
                "ChatRequest.messages of type []api.Message",
            )
        messages = [{**m, "role": str(m.get("role", "")).lower()} for m in raw_messages]
        empty = not messages

    options = _validate_options(body.get("options"))
    if empty:
        _load_only(srv, ex, spec, model, options, keep_alive, generate=generate)
        return

    if not spec.has("completion"):
        verb = "generate" if generate else "chat"
        raise _RequestError(400, f'"{model}" does not support {verb}')
    tools = body.get("tools") or []
    if not isinstance(tools, list):
        raise _RequestError(400, "json: cannot unmarshal into Go struct field tools")
    if tools and not spec.has("tools"):
        raise _RequestError(400, f"{qualified_model_name(model)} does not support tools")
    think: bool | str | None
    if think_raw is None:
        think = True if spec.has("thinking") else None
    elif isinstance(think_raw, str):
        if spec.family not in ("gptoss", "gpt-oss"):
            raise _RequestError(400, f'think value "{think_raw}" is not supported for this model')
        think = think_raw
    else:
        if think_raw and not spec.has("thinking"):
            raise _RequestError(400, f'"{model}" does not support thinking')
        think = think_raw
    fmt = body.get("format")
    if fmt == "" or fmt is None:
        fmt = None
    elif fmt != "json" and not isinstance(fmt, dict):
        raw_fmt = json.dumps(fmt, separators=(",", ":"))
        raise _RequestError(
            500,
            f'invalid format: {json.dumps(raw_fmt)}; expected "json" or a valid JSON Schema object',
        )
    stream = body.get("stream", True) is not False

    logprobs = with_logprobs and body.get("logprobs") is True
    turn = ChatTurn(
        model=model,
        spec=spec,
        messages=messages,
        tools=[t for t in tools if isinstance(t, dict)],
        format=fmt,
        options=options,
        think=think,
        instance=srv.name,
    )
    with _slot(srv, ex), _use_model(srv, ex, spec, options, keep_alive) as load_ns:
        _generate(
            srv,
            ex,
            turn,
            stream=stream,
            generate=generate,
            t_start=t_start,
            load_ns=load_ns,
            raw=raw,
            top_logprobs=top_logprobs if logprobs else None,
        )


def _load_only(
    srv: StandIn,
    ex: _Exchange,
    spec: StandInModel,
    model: str,
    options: dict[str, Any],
    keep_alive: int | None,
    *,
    generate: bool,
) -> None:
    if keep_alive == 0:
        srv.unload(spec.name)
        reason = "unload"
    else:
        with _use_model(srv, ex, spec, options, keep_alive):
            pass
        reason = "load"
    out: dict[str, Any] = {"model": model, "created_at": rfc3339_nano()}
    if generate:
        out["response"] = ""
    else:
        out["message"] = {"role": "assistant", "content": ""}
    out["done"] = True
    out["done_reason"] = reason
    ex.send_json(200, out)


def _generate(
    srv: StandIn,
    ex: _Exchange,
    turn: ChatTurn,
    *,
    stream: bool,
    generate: bool,
    t_start: int,
    load_ns: int,
    raw: bool = False,
    top_logprobs: int | None = None,
) -> None:
    """Run the engine and answer: NDJSON chunks, or one object with ``stream: false``.

    ``raw`` (generate): no ``context`` in the final chunk, as Ollama skips re-tokenising
    a raw prompt. ``top_logprobs`` is not ``None`` when ``logprobs`` was asked for: every
    chunk with text then carries ``logprobs`` (its tokens, each with that many alternatives),
    and a non-streamed answer carries them all.
    """
    opts = turn.options
    version = srv.config.version
    call_ids = version_at_least(version, 0, 12, 10)  # tool calls carry an id from 0.12.10
    always_index = version_at_least(version, 0, 12, 6)  # index,omitempty before 0.12.6
    num_predict = opts.get("num_predict")
    limit = int(num_predict) if isinstance(num_predict, (int, float)) else -1
    stops = opts.get("stop") or []
    stop_filter = _StopFilter([s for s in stops if isinstance(s, str)])
    token_delay = srv.config.token_delay

    content: list[str] = []
    thinking: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    eval_count = 0
    done_reason = "stop"
    prompt_count: int | None = None
    engine_eval: int | None = None
    t_first: int | None = None

    def base() -> dict[str, Any]:
        return {"model": turn.model, "created_at": rfc3339_nano()}

    all_logprobs: list[dict[str, Any]] = []

    def text_chunk(
        text: str = "", think_text: str = "", calls: list[dict[str, Any]] | None = None
    ) -> dict[str, Any]:
        out = base()
        if generate:
            out["response"] = text
            if think_text:
                out["thinking"] = think_text
        else:
            msg: dict[str, Any] = {"role": "assistant", "content": text}
            if think_text:
                msg["thinking"] = think_text
            if calls:
                msg["tool_calls"] = calls
            out["message"] = msg
        out["done"] = False
        if top_logprobs is not None and (text or think_text):
            entries = [scripted_logprob(text or think_text, top_logprobs)]
            all_logprobs.extend(entries)
            out["logprobs"] = entries
        return out

    def push(chunk: dict[str, Any]) -> bool:
        if not stream:
            return True
        return ex.emit(chunk)

    def logged(text: str = "", think_text: str = "") -> None:
        # a non-streamed answer still collects the logprobs of every piece
        if top_logprobs is not None and not stream:
            text_chunk(text, think_text)

    events: Iterator[EngineEvent] = iter(srv.engine.chat(turn))
    ended_by_fault = False
    try:
        for event in events:
            if isinstance(event, DoneEvent):
                done_reason = event.done_reason or done_reason
                prompt_count = event.prompt_eval_count
                engine_eval = event.eval_count
                break
            ex.sleep(token_delay)
            if t_first is None:
                t_first = time.perf_counter_ns()
            if isinstance(event, ToolCallEvent):
                function: dict[str, Any] = {"index": len(tool_calls)}
                if not always_index and not tool_calls:
                    del function["index"]
                function.update(name=event.name, arguments=event.arguments)
                call = {"id": _tool_call_id(), "function": function}
                if not call_ids:
                    del call["id"]
                tool_calls.append(call)
                eval_count += len(split_tokens(json.dumps(event.arguments))) + 1
                if generate:
                    continue
                if not push(text_chunk(calls=[call])):
                    ended_by_fault = True
                    break
                continue
            eval_count += 1
            if isinstance(event, ThinkingToken):
                thinking.append(event.text)
                if not stream:
                    logged(think_text=event.text)
                elif not push(text_chunk(think_text=event.text)):
                    ended_by_fault = True
                    break
            elif isinstance(event, TextToken):
                piece = stop_filter.feed(event.text)
                if piece:
                    content.append(piece)
                    if not stream:
                        logged(piece)
                    elif not push(text_chunk(piece)):
                        ended_by_fault = True
                        break
                if stop_filter.hit:
                    done_reason = "stop"
                    break
            if limit > 0 and eval_count >= limit:
                done_reason = "length"
                break
    except (_Aborted, OSError, _RequestError):
        raise
    except Exception as exc:
        message = f"an error was encountered while running the model: {exc}"
        if stream:  # framed as the advertised version frames it (a line, or a 500 JSON)
            ex.stream_error(500, message)
            return
        raise _RequestError(500, message) from exc
    finally:
        close = getattr(events, "close", None)
        if callable(close):
            close()
    if ended_by_fault:
        return
    if not stop_filter.hit:
        tail = stop_filter.flush()
        if tail:
            content.append(tail)
            if not stream:
                logged(tail)
            elif not push(text_chunk(tail)):
                return

    t_end = time.perf_counter_ns()
    first = t_first or t_end
    final = base()
    text = "".join(content) if not stream else ""
    think_text = "".join(thinking) if not stream else ""
    if generate:
        final["response"] = text
        if think_text:
            final["thinking"] = think_text
        if tool_calls:
            final["tool_calls"] = tool_calls
    else:
        msg: dict[str, Any] = {"role": "assistant", "content": text}
        if think_text:
            msg["thinking"] = think_text
        if tool_calls and not stream:
            msg["tool_calls"] = tool_calls
        final["message"] = msg
    final["done"] = True
    final["done_reason"] = done_reason
    if generate and not raw:
        final["context"] = list(range(1, min(eval_count, 8) + 2))
    if all_logprobs and not stream:
        final["logprobs"] = all_logprobs
    metrics = {
        "total_duration": t_end - t_start,
        "load_duration": load_ns,
        "prompt_eval_count": (
            prompt_count if prompt_count is not None else count_words(turn.messages)
        ),
        "prompt_eval_duration": max(first - t_start - load_ns, 1000),
        "eval_count": engine_eval if engine_eval is not None else eval_count,
        "eval_duration": max(t_end - first, 1000),
    }
    final.update({k: v for k, v in metrics.items() if v})
    if stream:
        if ex.emit(final, final=True):
            ex.end_stream()
    else:
        ex.send_json(200, final)


# Tokens offered as the alternatives of a scripted logprob (never the chosen one).
_ALTERNATIVES = tuple(
    " " + word
    for word in "the a and to of is in I it that for you on with as at be this or so".split()
)


def scripted_logprob(token: str, top: int) -> dict[str, Any]:
    """A deterministic ``logprobs`` entry (Ollama's ``api.Logprob``) for ``token``.

    The chosen token gets a probability in [0.4, 1) derived from its text; ``top`` > 0 adds
    ``top_logprobs``: the token itself first, then alternatives sharing what is left
    (each half the one before), so the list is sorted and sums to at most 1.
    """
    h = int.from_bytes(hashlib.blake2b(token.encode(), digest_size=4).digest(), "big")
    p = 0.4 + 0.599 * (h % 1000) / 1000
    lp = math.log(p)
    encoded = list(token.encode())
    entry: dict[str, Any] = {"token": token, "logprob": lp, "bytes": encoded}
    if top > 0:
        alts = [a for a in _ALTERNATIVES if a != token]
        tops = [{"token": token, "logprob": lp, "bytes": encoded}]
        rest = 1.0 - p
        for i, alt in enumerate(alts[: top - 1], start=1):
            alt_lp = math.log(rest / 2**i)
            tops.append({"token": alt, "logprob": alt_lp, "bytes": list(alt.encode())})
        entry["top_logprobs"] = tops
    return entry
