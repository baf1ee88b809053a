"""The endpoint handlers of the stand-in: what each Ollama route answers.

Each is a function of the stand-in (its models, residency, slots, engine) and one exchange.
Loading, ``keep_alive``, ``num_parallel`` queueing, stop sequences, ``num_predict`` and the
NDJSON chunk shapes live here; the wire and fault timing live in :mod:`._exchange`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, Protocol

from langchain_contextharbor.testing._exchange import _Exchange
from langchain_contextharbor.testing._gguf import GGUFError, GGUFInfo, read_gguf
from langchain_contextharbor.testing._requests import (
    _THINK_LEVELS,
    _StopFilter,
    _tool_call_id,
    _validate_options,
    check_top_logprobs,
    parse_keep_alive,
    version_at_least,
)
from langchain_contextharbor.testing._residency import Residency
from langchain_contextharbor.testing._slots import Slots
from langchain_contextharbor.testing._values import StandInConfig
from langchain_contextharbor.testing._wire import _POLL, _Aborted, _dumps, _go_type, _RequestError
from langchain_contextharbor.testing.engines import (
    ChatTurn,
    DoneEvent,
    EmbeddingNotSupported,
    Engine,
    EngineEvent,
    ScriptedEngine,
    TextToken,
    ThinkingToken,
    ToolCallEvent,
    count_words,
    normalize,
    split_tokens,
)
from langchain_contextharbor.testing.models import (
    LoadedModel,
    StandInModel,
    catalogue_model,
    normalize_model_name,
    qualified_model_name,
    rfc3339_nano,
)


@dataclass(frozen=True)
class Blob:
    """An uploaded blob: its size and, for a GGUF file, its header (``None`` otherwise).
    The bytes themselves are not kept."""

    size: int
    gguf: GGUFInfo | None = None
    gguf_error: str = ""


class StandIn(Protocol):
    """What an endpoint uses of the stand-in it answers for (``server.OllamaStandIn`` is
    one): its settings, engine, models, residency and slots, through their public API.
    Declared here, by the user, so this module does not import the server that imports it.
    """

    config: StandInConfig
    engine: Engine
    residency: Residency
    slots: Slots
    blobs: dict[str, Blob]

    @property
    def name(self) -> str: ...

    @property
    def models(self) -> list[StandInModel]: ...

    @property
    def loaded(self) -> list[LoadedModel]: ...

    def get_model(self, name: str) -> StandInModel | None: ...

    def add_model(self, model: StandInModel | str, *, loaded: bool = False) -> StandInModel: ...

    def remove_model(self, name: str) -> None: ...

    def unload(self, name: str | None = None) -> None: ...


_SCRIPTED = ScriptedEngine()


def _h_root(srv: StandIn, ex: _Exchange, body: dict[str, Any]) -> None:
    ex.send(200, "text/plain; charset=utf-8", b"Ollama is running")


def _h_api_version(srv: StandIn, ex: _Exchange, body: dict[str, Any]) -> None:
    ex.send_json(200, {"version": srv.config.version})


def _h_api_tags(srv: StandIn, ex: _Exchange, body: dict[str, Any]) -> None:
    models = sorted(srv.models, key=lambda m: m.modified_at_ns, reverse=True)
    ex.send_json(200, {"models": [m.tags_entry() for m in models]})


def _h_api_ps(srv: StandIn, ex: _Exchange, body: dict[str, Any]) -> None:
    loaded = sorted(srv.loaded, key=lambda lm: lm.expires_at_ns, reverse=True)
    ex.send_json(200, {"models": [lm.ps_entry() for lm in loaded]})


def _h_api_show(srv: StandIn, ex: _Exchange, body: dict[str, Any]) -> None:
    name = body.get("model") or body.get("name")
    if not isinstance(name, str) or not name:
        raise _RequestError(400, "model is required")
    spec = srv.get_model(name)
    if spec is None:
        raise _RequestError(404, f"model '{name}' not found")
    ex.send_json(200, spec.show_response())


# Ollama's model.ParseName, roughly: [host/][namespace/]model[:tag], each part from a
# restricted alphabet. An invalid name is refused before anything is looked up.
_NAME_PART = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}"
_VALID_NAME = re.compile(
    rf"(?:[A-Za-z0-9][A-Za-z0-9.-]*(?::\d+)?/)?(?:{_NAME_PART}/)?{_NAME_PART}(?::{_NAME_PART})?"
)


def _valid_name(name: Any) -> bool:
    return isinstance(name, str) and _VALID_NAME.fullmatch(name) is not None


def _go_quote(text: str) -> str:
    """Go's ``%q`` of a plain string (what Ollama's ``model %q not found`` prints)."""
    return json.dumps(text, ensure_ascii=False)


def _name_of(body: dict[str, Any]) -> Any:
    """``cmp.Or(req.Model, req.Name)``: ``model``, or the deprecated ``name``."""
    return body.get("model") or body.get("name") or ""


def _h_api_delete(srv: StandIn, ex: _Exchange, body: dict[str, Any]) -> None:
    # DeleteHandler (0.14.3): an invalid name is 400 `name "x" is invalid`, an unknown one
    # 404 `model 'x' not found` with SINGLE quotes (the reference's double-quoted text is
    # the embed/schedule one); success is a bare 200 with no body.
    name = _name_of(body)
    if not _valid_name(name):
        raise _RequestError(400, f"name {_go_quote(str(name))} is invalid")
    if srv.get_model(name) is None:
        raise _RequestError(404, f"model '{name}' not found")
    srv.remove_model(name)
    ex.send_status(200)


def _h_api_copy(srv: StandIn, ex: _Exchange, body: dict[str, Any]) -> None:
    # CopyHandler (0.14.3): 400 `source "x" is invalid` / `destination "x" is invalid`,
    # 404 `model "x" not found` (%q: double quotes here), else a bare 200.
    source, destination = body.get("source") or "", body.get("destination") or ""
    if not _valid_name(source):
        raise _RequestError(400, f"source {_go_quote(str(source))} is invalid")
    if not _valid_name(destination):
        raise _RequestError(400, f"destination {_go_quote(str(destination))} is invalid")
    spec = srv.get_model(source)
    if spec is None:
        raise _RequestError(404, f"model {_go_quote(source)} not found")
    srv.add_model(replace(spec, name=destination, modified_at_ns=time.time_ns()))
    ex.send_status(200)


def _pullable(srv: StandIn, name: str) -> StandInModel | None:
    """What the "registry" (the stand-in's ``catalogue``) has under ``name``."""
    catalogue = srv.config.catalogue
    if catalogue is None:
        return catalogue_model(name)
    key = normalize_model_name(name)
    for entry in catalogue:
        spec = entry if isinstance(entry, StandInModel) else StandInModel(entry)
        if spec.name == key:
            return replace(spec, modified_at_ns=time.time_ns())
    return None


_PULL_NOT_FOUND = "pull model manifest: file does not exist"


def _pull_lines(srv: StandIn, name: str) -> Iterator[dict[str, Any]]:
    """The progress lines of ``PullModel`` for ``name``; the model is added once its
    manifest is "written". Raises ``_RequestError(500)`` where the registry has no such
    model, after the first line, as Ollama does."""
    yield {"status": "pulling manifest"}
    local = srv.get_model(name)
    spec = local or _pullable(srv, name)
    if spec is None:
        raise _RequestError(500, _PULL_NOT_FOUND)
    for digest, size in spec.layers():
        status = f"pulling {digest[7:19]}"
        steps = (size,) if local is not None else (0, size // 2, size) if size > 4096 else (0, size)
        for done in steps:
            line: dict[str, Any] = {"status": status, "digest": digest, "total": size}
            if done:
                line["completed"] = done
            yield line
    yield {"status": "verifying sha256 digest"}
    yield {"status": "writing manifest"}
    if local is None:
        srv.add_model(spec)
    yield {"status": "success"}


def _progress(
    srv: StandIn, ex: _Exchange, body: dict[str, Any], lines: Iterator[dict[str, Any]]
) -> None:
    """Answer a progress endpoint (pull, create): NDJSON lines with ``stream`` (default),
    else the last line alone (``waitForStream``: any error as a 500 JSON)."""
    stream = body.get("stream", True) is not False
    if not stream:
        last: dict[str, Any] = {}
        try:
            for line in lines:
                last = line
        except _RequestError as err:
            ex.send(err.status, "application/json", _dumps({"error": err.message}))
            return
        ex.send(200, "application/json", _dumps(last))
        return
    try:
        for line in lines:
            ex.sleep(srv.config.token_delay)
            if not ex.emit(line):
                return
    except _RequestError as err:
        ex.stream_error(err.status, err.message)
        return
    ex.end_stream()


def _h_api_pull(srv: StandIn, ex: _Exchange, body: dict[str, Any]) -> None:
    name = _name_of(body)
    if not _valid_name(name):
        raise _RequestError(400, "invalid model name")
    _progress(srv, ex, body, _pull_lines(srv, name))


def _create_lines(srv: StandIn, name: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """``CreateHandler`` from ``from`` (a local model, else pulled first): the base's layers
    reused, new template/system/parameters layers, the manifest, ``success``."""
    source = body.get("from")
    if not source:
        files = body.get("files")
        if isinstance(files, dict):
            yield from _from_files(srv, name, files)
            return
        raise _RequestError(400, "neither 'from' or 'files' was specified")
    if not _valid_name(source):
        raise _RequestError(400, "invalid model name")
    base = srv.get_model(source)
    if base is None:
        yield from (line for line in _pull_lines(srv, source) if line["status"] != "success")
        base = srv.get_model(source)
        assert base is not None
    changes: dict[str, Any] = {}
    template = body.get("template")
    if isinstance(template, str) and template:
        changes["template"] = template
    params = body.get("parameters")
    if isinstance(params, dict) and params:
        changes["parameters"] = "\n".join(
            f"{key:<30} {json.dumps(v) if isinstance(v, str) else v}"
            for key, val in params.items()
            for v in (val if isinstance(val, list) else [val])
        )
    spec = replace(base, name=name, modified_at_ns=time.time_ns(), **changes)
    system = body.get("system")
    if changes or system:
        extra = json.dumps([sorted(changes.items()), system])
        spec.digest = hashlib.sha256(f"{base.digest}:{extra}".encode()).hexdigest()
    new_content = {
        "template": changes.get("template"),
        "params": changes.get("parameters"),
        "system": system if isinstance(system, str) and system else None,
    }
    kinds = ("model", "template", "params")
    for kind, (digest, _size) in zip(kinds, base.layers()[:3], strict=True):
        if new_content.get(kind) is None:
            yield {"status": f"using existing layer {digest}"}
    for content in new_content.values():
        if content is not None:
            digest = "sha256:" + hashlib.sha256(content.encode()).hexdigest()
            yield {"status": f"creating new layer {digest}"}
    yield {"status": "writing manifest"}
    srv.add_model(spec)
    yield {"status": "success"}


BLOBS_PREFIX = "/api/blobs/"
BLOB_METHODS = frozenset({"HEAD", "POST"})
_DIGEST = re.compile(r"sha256[:-][0-9a-fA-F]{64}")


def blob_endpoint(srv: StandIn, ex: _Exchange, method: str, digest: str, raw: bytes) -> None:
    """``HEAD`` / ``POST /api/blobs/:digest`` (HeadBlobHandler / CreateBlobHandler)."""
    if not _DIGEST.fullmatch(digest):
        raise _RequestError(400, "invalid digest format")
    key = "sha256:" + digest[7:].lower()
    if method == "HEAD":
        if key not in srv.blobs:
            raise _RequestError(404, f"blob {_go_quote(digest)} not found")
        ex.send_status(200)
        return
    if key in srv.blobs:
        ex.send_status(200)
        return
    got = "sha256:" + hashlib.sha256(raw).hexdigest()
    if got != key:
        raise _RequestError(
            400, f"digest mismatch, expected {_go_quote(digest)}, got {_go_quote(got)}"
        )
    gguf: GGUFInfo | None = None
    error = ""
    try:
        gguf = read_gguf(raw)
    except GGUFError as exc:
        error = str(exc)
    srv.blobs[key] = Blob(len(raw), gguf, error)
    ex.send_status(201)


def _parameter_size(count: int) -> str:
    """Ollama's ``format.HumanNumber`` of a parameter count, as ``parameter_size`` shows it
    (``1B``, ``1.2B``, ``134.52M``, ``22K``)."""
    if count >= 1_000_000_000:
        value = count / 1e9
        return f"{value:.0f}B" if value == math.floor(value) else f"{value:.1f}B"
    if count >= 1_000_000:
        value = count / 1e6
        return f"{value:.0f}M" if value == math.floor(value) else f"{value:.2f}M"
    if count >= 1_000:
        return f"{count / 1e3:.0f}K"
    return str(count)


def _from_files(srv: StandIn, name: str, files: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """``convertModelFromFiles`` for GGUF blobs: the model's numbers come from the header."""
    if not files:
        raise _RequestError(400, "no files provided to convert")
    if any(str(f).endswith(".safetensors") for f in files):
        raise _RequestError(400, "the stand-in does not convert safetensors")
    blobs = []
    for fname, digest in files.items():
        blob = (
            srv.blobs.get("sha256:" + str(digest)[7:].lower()) if isinstance(digest, str) else None
        )
        if not str(fname).endswith(".gguf") and (blob is None or blob.gguf is None):
            raise _RequestError(400, "unknown type")
        yield {"status": "parsing GGUF"}
        if blob is None:
            raise _RequestError(500, f"open {digest}: no such file or directory")
        if blob.gguf is None:
            raise _RequestError(400, "supplied file was not in GGUF format")
        blobs.append((str(digest), blob))
    digest, blob = blobs[0]
    info = blob.gguf
    assert info is not None
    arch = info.architecture or "llama"
    caps = ["embedding"] if info.arch_value("pooling_type") is not None else ["completion"]
    extra: dict[str, Any] = {}
    for key, attr in (
        ("context_length", "context_length"),
        ("embedding_length", "embedding_length"),
        ("block_count", "block_count"),
        ("attention.head_count", "head_count"),
        ("attention.head_count_kv", "head_count_kv"),
    ):
        value = info.arch_value(key)
        if isinstance(value, int) and value > 0:
            extra[attr] = value
    spec = StandInModel(
        name,
        size=sum(b.size for _d, b in blobs),
        digest=hashlib.sha256(digest.encode()).hexdigest(),
        family=arch,
        parameter_size=_parameter_size(info.parameter_count) if info.parameter_count else "",
        quantization_level=info.quantization_level or "unknown",
        capabilities=caps,
        **extra,
    )
    for d, _b in blobs:
        yield {"status": f"using existing layer {d}"}
    yield {"status": "writing manifest"}
    srv.add_model(spec)
    yield {"status": "success"}


def _h_api_create(srv: StandIn, ex: _Exchange, body: dict[str, Any]) -> None:
    files = body.get("files")
    if isinstance(files, dict) and any(
        str(path).startswith("/") or ".." in str(path).split("/") for path in files
    ):
        raise _RequestError(400, "file path must be relative")
    name = _name_of(body)
    if not _valid_name(name):
        raise _RequestError(400, "invalid model name")
    _progress(srv, ex, body, _create_lines(srv, name, body))


def _h_api_embed(srv: StandIn, ex: _Exchange, body: dict[str, Any]) -> None:
    _embed(srv, ex, body, legacy=False)


def _h_api_embeddings(srv: StandIn, ex: _Exchange, body: dict[str, Any]) -> None:
    _embed(srv, ex, body, legacy=True)


def _embed(srv: StandIn, ex: _Exchange, body: dict[str, Any], *, legacy: bool) -> None:
    t0 = time.perf_counter_ns()
    model = body.get("model")
    raw_input = body.get("prompt", "") if legacy else body.get("input")
    # EmbedHandler reads the input before it looks the model up. An empty string, like
    # no input at all, is no input: 200 with "embeddings": [] (0.14.3), not one vector.
    if raw_input is None or isinstance(raw_input, str):
        texts = [raw_input] if raw_input else []
    elif isinstance(raw_input, list) and all(isinstance(t, str) for t in raw_input):
        texts = list(raw_input)
    else:
        raise _RequestError(400, "invalid input type")
    if not isinstance(model, str) or not model:
        raise _RequestError(400, "model is required")
    spec = srv.get_model(model)
    if spec is None:
        raise _RequestError(404, f'model "{model}" not found, try pulling it first')
    keep_alive = parse_keep_alive(body.get("keep_alive"))
    options = _validate_options(body.get("options"))
    dims = body.get("dimensions")
    want = dims if isinstance(dims, int) and not isinstance(dims, bool) and dims > 0 else 0
    embedder = getattr(srv.engine, "embed", None)
    if not callable(embedder):
        embedder = _SCRIPTED.embed
    with _use_model(srv, ex, spec, options, keep_alive) as load_ns:
        if not texts:
            if legacy:
                ex.send_json(200, {"embedding": []})
            else:
                ex.send_json(200, {"model": model, "embeddings": []})
            return
        limit = min(int(options.get("num_ctx") or srv.config.num_ctx), spec.context_length)
        truncate = body.get("truncate") is not False
        texts, prompt_tokens = _fit_context(texts, limit, truncate=truncate)
        try:
            vectors = [list(v) for v in embedder(spec, texts)]
        except EmbeddingNotSupported:
            # What Ollama's runner answers for a model without pooling (a chat
            # model); the legacy endpoint turns every runner error into a 500.
            raise _RequestError(
                500 if legacy else 501, "this model does not support embeddings"
            ) from None
    if want:  # Ollama truncates to `dimensions` and normalises again
        vectors = [normalize(v[:want]) if want < len(v) else v for v in vectors]
    if legacy:
        ex.send_json(200, {"embedding": vectors[0] if vectors else []})
        return
    out: dict[str, Any] = {"model": model, "embeddings": vectors}
    out["total_duration"] = time.perf_counter_ns() - t0
    out["load_duration"] = load_ns
    if prompt_tokens:
        out["prompt_eval_count"] = prompt_tokens
    ex.send_json(200, out)


def _fit_context(texts: list[str], limit: int, *, truncate: bool) -> tuple[list[str], int]:
    """Each input cut to ``limit`` tokens (words, the scripted engine's tokens), as
    EmbedHandler retries an input the runner found too long; with ``truncate: false`` the
    runner's 400 instead. Returns the inputs and the tokens they count."""
    out: list[str] = []
    total = 0
    for text in texts:
        words = text.split()
        if len(words) > limit:
            if not truncate:
                raise _RequestError(400, "the input length exceeds the context length")
            words = words[:limit]
            text = " ".join(words)
        out.append(text)
        total += len(words)
    return out, total


# ---------------------------------------------------------------------------- load / slots
@contextlib.contextmanager
def _use_model(
    srv: StandIn,
    ex: _Exchange,
    spec: StandInModel,
    options: dict[str, Any],
    keep_alive_ns: int | None,
) -> Iterator[int]:
    """Load ``spec`` if needed (paying ``load_delay``), pin it while the body runs."""
    num_ctx = int(options.get("num_ctx") or srv.config.num_ctx)
    num_gpu = int(options.get("num_gpu", -1))
    residency = srv.residency
    ka = keep_alive_ns if keep_alive_ns is not None else residency.keep_alive_ns()
    t0 = time.perf_counter_ns()
    pin = residency.pin(spec, num_ctx=num_ctx, num_gpu=num_gpu)
    try:
        if pin.loads:
            try:
                ex.sleep(srv.config.load_delay)
            finally:
                pin.loaded()
        else:
            while not pin.wait_loaded(_POLL):
                if ex.stop_event.is_set() or ex.client_gone():
                    raise _Aborted
        load_ns = max(time.perf_counter_ns() - t0, 1_000)
        yield load_ns
    finally:
        residency.unpin(pin, ka)


@contextlib.contextmanager
def _slot(srv: StandIn, ex: _Exchange) -> Iterator[None]:
    """One of ``num_parallel`` generation slots; 503 beyond ``max_queue`` waiters."""
    with srv.slots.hold(lambda: ex.stop_event.is_set() or ex.client_gone()):
        yield


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


#: Path -> handler; ``StandIn`` dispatches here after method and body checks.
ENDPOINTS: dict[str, Callable[[StandIn, _Exchange, dict[str, Any]], None]] = {
    "/": _h_root,
    "/api/version": _h_api_version,
    "/api/tags": _h_api_tags,
    "/api/ps": _h_api_ps,
    "/api/show": _h_api_show,
    "/api/delete": _h_api_delete,
    "/api/copy": _h_api_copy,
    "/api/pull": _h_api_pull,
    "/api/create": _h_api_create,
    "/api/embed": _h_api_embed,
    "/api/embeddings": _h_api_embeddings,
    "/api/chat": _h_api_chat,
    "/api/generate": _h_api_generate,
}
