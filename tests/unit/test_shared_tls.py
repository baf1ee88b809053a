"""One TLS context per process: each httpx client used to load the CA bundle itself
(35-95 ms and ~0.5 MB each, up to five per backend); plain http:// servers need none."""

from __future__ import annotations

import ssl

from langchain_contextharbor import BackendConfig, HybridChatOllama
from langchain_contextharbor._transport import shared_ssl_context, ssl_context_ready


def test_one_context_per_verify_setting() -> None:
    a = shared_ssl_context(True)
    assert a is shared_ssl_context(True)
    assert isinstance(a, ssl.SSLContext) and a.verify_mode == ssl.CERT_REQUIRED
    assert ssl_context_ready(True)
    unverified = shared_ssl_context(False)
    assert unverified is not a and unverified.verify_mode == ssl.CERT_NONE
    own = ssl.create_default_context()
    assert shared_ssl_context(own) is own


def test_plain_http_gets_a_bare_context_that_cannot_pass_unchecked() -> None:
    bare = shared_ssl_context(True, tls=False)
    assert bare is shared_ssl_context(False, tls=False)
    assert bare.verify_mode == ssl.CERT_REQUIRED and bare.check_hostname
    assert bare.cert_store_stats()["x509_ca"] == 0  # no CA bundle was loaded
    assert ssl_context_ready(True, tls=False)


def test_every_client_of_a_model_shares_it() -> None:
    m = HybridChatOllama(
        model="llama3.2:1b",
        backends=[
            BackendConfig(name="gpu", base_url="http://127.0.0.1:9"),
            BackendConfig(name="tls", kind="cpu", base_url="https://127.0.0.1:9"),
        ],
        background_probes=False,
    )
    try:
        ctxs = []
        for name in ("gpu", "tls"):
            inner = m.backend_model(name)
            transport = inner._client._client._transport  # type: ignore[union-attr]
            pool = transport._inner._pool
            ctxs.append(pool._ssl_context)
            probe = m.router._prober.http(m.router.get(name))
            ctxs.append(probe._transport._pool._ssl_context)
        assert ctxs[0] is ctxs[1] is shared_ssl_context(True, tls=False)
        assert ctxs[2] is ctxs[3] is shared_ssl_context(True)
    finally:
        m.close()
