"""The stand-in's model-management routes: ``/api/delete``, ``/api/copy``, ``/api/pull``,
``/api/create`` and ``/api/blobs/<digest>``, with Ollama's name rules and progress
lines. Gathered into the route table by :mod:`._endpoints`.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from langchain_contextharbor.testing._endpoints_base import (
    Blob,
    StandIn,
)
from langchain_contextharbor.testing._exchange import _Exchange
from langchain_contextharbor.testing._gguf import GGUFError, GGUFInfo, read_gguf
from langchain_contextharbor.testing._wire import _dumps, _RequestError
from langchain_contextharbor.testing.models import (
    StandInModel,
    catalogue_model,
    normalize_model_name,
)

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
