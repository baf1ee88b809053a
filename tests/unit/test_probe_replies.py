"""Issue 18 item 1, the pure half: what an answer says about the server that gave it.

Tables of cases for the probe's ``/api/version`` reading, the transport's "is this Ollama's
protocol" test, the validated probe parsers, and the classifier's verdict on a reply that
is not Ollama's."""

from __future__ import annotations

import httpx
import pytest
from ollama import ResponseError
from ollama._types import ChatResponse, Message
from pydantic import ValidationError

from langchain_contextharbor._facts import decode_reply, parse_loaded, parse_tags, read_version
from langchain_contextharbor._transport import NotOllamaResponse, not_ollama_reason
from langchain_contextharbor.classify import FailoverCategory, classify_exception

JSON = "application/json"


@pytest.mark.parametrize(
    ("status", "ctype", "body", "root", "want"),
    [
        (200, JSON, b'{"version":"0.14.3"}', None, ("0.14.3", None)),
        (200, JSON, b'{"version":""}', None, None),
        (200, JSON, b'{"version":3}', None, None),
        (200, JSON, b'["0.14.3"]', None, None),
        (200, JSON, b"{not json", None, None),
        (200, JSON, b'{"version": NaN}', None, None),
        (200, "text/html", b"<html>", None, (None, "HTTP 200, text/html: not an Ollama server")),
        (404, "text/html", b"", (200, b"<html>dir</html>"), None),
        (404, "text/plain", b"404 page not found", (200, b"Ollama is running"), (None, None)),
        (501, "text/html", b"<html>", None, (None, "HTTP 501, text/html: not an Ollama server")),
    ],
)
def test_read_version(
    status: int, ctype: str, body: bytes, root: tuple[int, bytes] | None, want: object
) -> None:
    got = read_version(status, ctype, body, root)
    if want is None:
        assert got[0] is None and got[1] is not None and "not an Ollama server" in got[1]
    else:
        assert got == want


def test_read_version_says_what_a_proxy_error_is() -> None:
    assert "access refused" in (read_version(401, "text/html", b"", None)[1] or "")
    assert "server error" in (read_version(502, "text/html", b"", None)[1] or "")


@pytest.mark.parametrize(
    ("status", "ctype", "body", "ollama"),
    [
        (200, "application/x-ndjson", None, True),
        (200, JSON, None, True),
        (404, JSON, b'{"error":"model \'x\' not found"}', True),
        (501, JSON, b'{"error":"\\"bert\\" does not support chat"}', True),
        (403, "", b"", True),  # Ollama's foreign-Host answer: no body, no type
        (501, "text/html", b"<html>", False),
        (200, "text/html", None, False),
        (404, "text/plain", b"404 page not found", False),
        (501, JSON, b'{"detail":"x"}', False),
        (500, JSON, b"oops", False),
    ],
)
def test_not_ollama_reason(status: int, ctype: str, body: bytes | None, ollama: bool) -> None:
    assert (not_ollama_reason(status, ctype, body) is None) is ollama


def test_decode_reply_rejects_non_numbers() -> None:
    with pytest.raises(ValueError, match="/api/ps"):
        decode_reply(b'{"models":[{"size": Infinity}]}', "/api/ps")


def test_parsers_drop_what_is_not_a_finite_count() -> None:
    loaded = parse_loaded(
        [
            {"model": "a:1", "size": 10, "size_vram": 5},
            {"model": "b:1", "size": float("inf"), "size_vram": 0},
            {"model": "c:1", "size": True, "size_vram": 0},
            {"model": "d:1", "size": -4, "size_vram": 0},
            {"model": 7, "size": 1},
            {"model": "e:1", "size": 1.0, "size_vram": "x"},
        ]
    )
    assert list(loaded) == ["a:1"]
    tags = parse_tags([{"name": "a:1", "size": float("nan")}, {"name": "b:1", "size": 3}])
    assert tags == {"a:1": 0, "b:1": 3}


def _validation_error(fn: object) -> ValidationError:
    try:
        fn()  # type: ignore[operator]
    except ValidationError as exc:
        return exc
    raise AssertionError("no ValidationError")


def test_classify_not_ollama_answers_as_backend_faults() -> None:
    req = httpx.Request("POST", "http://h/api/chat")
    c = classify_exception(NotOllamaResponse("x", request=req))
    assert (c.category, c.failover, c.counts_against_backend) == (
        FailoverCategory.MALFORMED,
        True,
        True,
    )
    html = classify_exception(ResponseError("<!DOCTYPE HTML>\n<html>...</html>", 501))
    assert html.category is FailoverCategory.MALFORMED and html.failover
    own = classify_exception(ResponseError('{"error":"x does not support chat"}', 501))
    assert own.category is FailoverCategory.FATAL and not own.failover
    reply = classify_exception(_validation_error(lambda: ChatResponse(foo=1)))
    assert reply.category is FailoverCategory.MALFORMED and reply.failover
    request = classify_exception(_validation_error(lambda: Message(role=3)))  # the caller's
    assert request.category is FailoverCategory.FATAL
