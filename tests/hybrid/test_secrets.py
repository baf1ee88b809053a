"""Planted credentials never appear in any text a user can see.

Secrets are planted in a URL's userinfo, in a header, in a ``?token=`` query and in
malformed URLs (a password with ``#``, ``/`` or ``?``), then every observable text is
grepped: log records of every logger at DEBUG (httpx and httpcore included), reprs, dumps,
error messages, response metadata, stats, plans and the CLI's output.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from langchain_contextharbor import (
    AllBackendsFailedError,
    BackendConfig,
    ConfigurationError,
    HybridChatOllama,
    StreamInterruptedError,
    Timeouts,
)
from langchain_contextharbor.backends import redact_url, validate_base_url
from langchain_contextharbor.cli import main
from langchain_contextharbor.testing import Fault, OllamaStandIn

MODEL = "llama3.2:1b"

PASSWORD = "pw-s3cr3t-1"
TOKEN = "tok-s3cr3t-2"
QUERY = "q-s3cr3t-3"
SECRETS = (PASSWORD, TOKEN, QUERY, "s3cr3t")
# Roomy: no test here provokes a timeout with these (a loaded CI machine must not either).
FAST = Timeouts(connect=10.0, first_token=30.0, idle=30.0, probe=10.0)

MALFORMED = [
    f"http://user:{PASSWORD}#x@127.0.0.1:1",
    f"http://user:ab/{PASSWORD}@127.0.0.1:1",
    f"http://user:ab?{PASSWORD}@127.0.0.1:1",
    f"http://user/{PASSWORD}@127.0.0.1:1",
    f"http://127.0.0.1:1/?token={QUERY}",
    f"http://127.0.0.1:1/#{QUERY}",
    f"http://user:{PASSWORD}@127.0.0.1:abc",
]


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.texts.append(self.format(record))


def _leaks(texts: list[str]) -> list[str]:
    return [t for t in texts if any(s in t for s in SECRETS)]


@pytest.mark.parametrize("url", MALFORMED)
def test_malformed_urls_never_echo_secrets(url: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        validate_base_url(url)
    texts = [str(info.value), redact_url(url)]
    for kw in ({"gpu_url": url, "cpu_url": ""}, {"base_url": url}):
        with pytest.raises(ConfigurationError) as info2:
            HybridChatOllama(model=MODEL, **kw)
        texts.append(str(info2.value))
    assert not _leaks(texts), texts


def test_no_planted_secret_in_any_observable_text(
    pair: tuple[OllamaStandIn, OllamaStandIn],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gpu, cpu = pair
    collect = _Collect()
    collect.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(collect)
    root.setLevel(logging.DEBUG)
    for name in ("httpx", "httpcore", "langchain_contextharbor"):
        monkeypatch.setattr(logging.getLogger(name), "level", logging.DEBUG)
    texts: list[str] = []
    try:
        model = HybridChatOllama(
            model=MODEL,
            backends=[
                BackendConfig(
                    name="gpu",
                    base_url=gpu.url.replace("//", f"//alice:{PASSWORD}@"),
                    timeouts=FAST,
                ),
                BackendConfig(
                    name="cpu",
                    kind="cpu",
                    base_url=cpu.url,
                    headers={"Authorization": f"Bearer {TOKEN}"},
                    timeouts=FAST,
                ),
            ],
            background_probes=False,
        )
        model.refresh()
        gpu.inject(Fault.CUT_MID_STREAM, count=1, after_chunks=1)
        msg = model.invoke("hi")  # falls back to cpu: the attempt on gpu is in metadata
        texts += [str(msg), str(msg.response_metadata), repr(msg)]
        single = HybridChatOllama(
            model=MODEL, base_url=gpu.url.replace("//", f"//alice:{PASSWORD}@"), timeout=2.0
        )
        gpu.inject(Fault.CUT_MID_STREAM, count=1, after_chunks=2)
        with pytest.raises(StreamInterruptedError) as interrupted:
            for _ in single.stream("hi"):
                pass
        texts += [str(interrupted.value), repr(single), single.model_dump_json()]
        single.close()
        gpu.inject(Fault.REFUSE)
        cpu.inject(Fault.REFUSE)
        model.router.close()  # force fresh probe connections that fail
        model.refresh()
        with pytest.raises(AllBackendsFailedError) as failed:
            model.invoke("again")
        texts += [str(failed.value), repr(failed.value)]
        texts += [str(e) for e in failed.value.exceptions]
        texts += [a.describe() for a in failed.value.attempts]
        gpu.clear_faults()
        cpu.clear_faults()
        texts += [
            repr(model),
            str(model),
            model.model_dump_json(),
            str(model.model_dump()),
            str(model.stats()),
            model.select_backend().explain(),
            str(model._identifying_params),
            repr(model.backend_configs),
            repr(model.inner_models),
            repr(model.backend_model("cpu")),
            model.backend_model("gpu").model_dump_json(),
            model.backend_model("cpu").model_dump_json(),
            str(model._select_backend()),
        ]
        texts += [c.model_dump_json() for c in model.backend_configs]
        model.close()
        # the CLI, with good URLs carrying secrets and then with malformed ones
        monkeypatch.setenv("OLLAMA_GPU_URL", gpu.url.replace("//", f"//alice:{PASSWORD}@"))
        monkeypatch.setenv("OLLAMA_CPU_URL", cpu.url)
        argvs: list[list[str]] = [["check"], ["check", "--json"], ["route", MODEL]]
        argvs += [["check", "--gpu-url", url] for url in MALFORMED]
        argvs += [["route", MODEL, "--cpu-url", url] for url in MALFORMED]
        for argv in argvs:
            code = main(argv)
            out, err = capsys.readouterr()
            texts.append(f"{argv[0]} rc={code}\n{out}{err}")
        for url in MALFORMED:
            monkeypatch.setenv("OLLAMA_CPU_URL", url)
            main(["check"])
            out, err = capsys.readouterr()
            texts.append(out + err)
            assert "OLLAMA_CPU_URL" in out + err
    finally:
        root.removeHandler(collect)
        root.setLevel(old_level)
    texts += collect.texts
    # the test must have seen the traffic it claims to grep
    assert any(t.startswith("httpx ") for t in collect.texts), "no httpx log line captured"
    assert any(t.startswith("httpcore") for t in collect.texts), "no httpcore log line captured"
    assert not _leaks(texts), "\n---\n".join(_leaks(texts))[:3000]


def test_url_credentials_and_authorization_header_together_is_an_error() -> None:
    with pytest.raises(ValueError, match="credentials in its base_url and an Authorization"):
        BackendConfig(
            name="a",
            base_url=f"http://u:{PASSWORD}@127.0.0.1:1",
            headers={"authorization": f"Bearer {TOKEN}"},
        )
    with pytest.raises(ConfigurationError) as info:
        HybridChatOllama(
            model=MODEL,
            base_url=f"http://u:{PASSWORD}@127.0.0.1:1",
            client_kwargs={"headers": {"Authorization": f"Bearer {TOKEN}"}},
        )
    assert not _leaks([str(info.value)])


def test_url_credentials_reach_the_server_as_basic_auth(
    pair: tuple[OllamaStandIn, OllamaStandIn],
) -> None:
    """Moving userinfo into a header must still authenticate: what the server receives."""
    gpu, _ = pair
    seen: list[Any] = []
    import http.server

    orig = http.server.BaseHTTPRequestHandler.parse_request

    def spy(self: Any) -> bool:
        ok = orig(self)
        seen.append(self.headers.get("Authorization"))
        return ok

    http.server.BaseHTTPRequestHandler.parse_request = spy  # type: ignore[method-assign]
    try:
        model = HybridChatOllama(
            model=MODEL,
            base_url=gpu.url.replace("//", f"//alice:{PASSWORD}@"),
            background_probes=False,
        )
        model.refresh()
        model.invoke("hi")
        model.close()
    finally:
        http.server.BaseHTTPRequestHandler.parse_request = orig  # type: ignore[method-assign]
    import base64

    want = "Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    assert seen and all(h == want for h in seen), seen


def test_health_report_errors_go_through_the_one_scrubber() -> None:
    """``contextharbor check`` masks what the chat model masks: it had its own copy of the
    scrubber that removed URL credentials but not a configured header's value (an API key
    that an error text quotes). A probe's failure text is planted with both, then shown."""
    from dataclasses import replace

    from langchain_contextharbor import health
    from langchain_contextharbor._router import Router
    from langchain_contextharbor._settings import RouterSettings

    cfg = BackendConfig(
        name="cpu",
        kind="cpu",
        base_url="http://127.0.0.1:1",  # nothing listens: the probe fails
        headers={"X-Api-Key": TOKEN},
        timeouts=FAST,
    )
    router = Router([cfg], RouterSettings(background_probes=False))
    try:
        router.refresh()
        probe = router.backends[0].probe
        assert probe is not None and not probe.ok
        planted = replace(probe, reason=f"HTTP 401: key {TOKEN} refused at {cfg.base_url}")
        report = health._health(cfg, planted, 1.0, lambda: None)
    finally:
        router.close()
    assert report.error and "***" in report.error
    assert not _leaks([report.error, repr(report), str(report.as_dict())])


def test_a_short_userinfo_is_masked_where_it_stands_before_the_host() -> None:
    """Secrets under 3 characters are not masked everywhere (every "a" in a message would
    go), but ``user@`` / ``u:p@`` is masked wherever a URL shows it, whatever its length."""
    cfg = BackendConfig(name="a", base_url="http://ab@127.0.0.1:1")
    assert (
        cfg.scrub("GET ab@127.0.0.1:1/api/tags: a label") == "GET ***@127.0.0.1:1/api/tags: a label"
    )
    assert cfg.scrub(f"{cfg.base_url}/api/tags") == f"{cfg.safe_url}/api/tags"
