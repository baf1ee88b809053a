"""Planted credentials never appear in any text a user can see.

Secrets are planted in a URL's userinfo, in a header, in a ``?token=`` query and in
malformed URLs (a password with ``#``, ``/`` or ``?``), then every observable text is
grepped: log records of every logger at DEBUG (httpx and httpcore included), reprs, dumps,
error messages, response metadata, stats, plans and the CLI's output.
"""

from __future__ import annotations

import base64
import collections
import copy
import logging
import pickle
import pprint
import types
from collections.abc import Callable
from typing import Any

import httpx
import pydantic
import pytest
from pydantic import SecretStr

from langchain_contextharbor import (
    AllBackendsFailedError,
    BackendConfig,
    ConfigurationError,
    HybridChatOllama,
    HybridOllamaEmbeddings,
    StreamInterruptedError,
    Timeouts,
)
from langchain_contextharbor.backends import SecretUrl, redact_url, validate_base_url
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


# --- secrets held in objects: vars(), pickles, exception attributes, every logger ----------

KEY = "key-s3cr3t-4"
EXTRA = "extra-s3cr3t-5"
REDIS_PW = "redis-s3cr3t-6"
BASIC = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
HELD = (PASSWORD, TOKEN, QUERY, KEY, EXTRA, REDIS_PW, BASIC)
_OPAQUE = (SecretStr, SecretUrl)


def _held(text: str | bytes) -> list[str]:
    if isinstance(text, bytes):
        return [s for s in HELD if s.encode() in text]
    return [s for s in HELD if s in text]


def _walk(root: Any, where: str, skip: tuple[type, ...] = ()) -> list[str]:
    """Every planted secret reachable from ``root`` through ``vars()``/slots, pydantic
    private attributes, containers and, for exceptions, ``__cause__``/``__context__``/
    ``args``: as ``path: secret``. A secret type (``SecretStr``, ``SecretUrl``) is opaque:
    what is checked is what it shows (repr, str), as for ``pprint(vars(obj))``."""
    found: list[str] = []
    seen: set[int] = set()
    todo: list[tuple[Any, str, int]] = [(root, where, 0)]
    while todo:
        obj, path, depth = todo.pop()
        if id(obj) in seen or depth > 40:
            continue
        seen.add(id(obj))
        if isinstance(obj, _OPAQUE):
            found += [f"{path}: {s}" for s in _held(repr(obj) + str(obj) + f"{obj}")]
            continue
        if isinstance(obj, (str, bytes, bytearray, memoryview)):
            found += [
                f"{path}: {s}" for s in _held(bytes(obj) if not isinstance(obj, str) else obj)
            ]
            continue
        if (
            isinstance(
                obj,
                (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, int, float),
            )
            or obj is None
        ):
            continue
        if skip and isinstance(obj, skip):
            continue
        kids: list[tuple[str, Any]] = []
        if isinstance(obj, dict):
            kids += [(f"[{k!r}]", v) for k, v in obj.items()]
            kids += [(f"<key {k!r}>", k) for k in obj if isinstance(k, (str, bytes))]
        elif isinstance(obj, (list, tuple, set, frozenset, collections.deque)):
            kids += [(f"[{i}]", v) for i, v in enumerate(obj)]
        if isinstance(obj, BaseException):
            kids += [(".__cause__", obj.__cause__), (".__context__", obj.__context__)]
            kids += [(".args", obj.args)]
        if isinstance(obj, types.MethodType):
            kids.append((".__self__", obj.__self__))
        if isinstance(obj, pydantic.BaseModel):
            kids += [(".__pydantic_private__", obj.__pydantic_private__)]
            kids += [(".__pydantic_extra__", obj.__pydantic_extra__)]
        d = getattr(obj, "__dict__", None)
        if isinstance(d, dict):
            kids += [(f".{k}", v) for k, v in d.items()]
        for cls in type(obj).__mro__:
            for slot in (
                getattr(cls, "__slots__", ())
                if isinstance(getattr(cls, "__slots__", ()), (tuple, list))
                else ()
            ):
                if slot not in ("__dict__", "__weakref__") and hasattr(obj, slot):
                    kids.append((f".{slot}", getattr(obj, slot, None)))
        todo += [(v, path + name, depth + 1) for name, v in kids]
    return found


def _errors_of(call: Callable[[], Any]) -> BaseException:
    try:
        call()
    except Exception as exc:
        return exc
    raise AssertionError("the call did not fail")


def _pickled(obj: Any) -> bytes:
    """``pickle.dumps(obj)``, or ``b""`` when it refuses (a secret is never written)."""
    try:
        return pickle.dumps(obj)
    except (TypeError, AttributeError, pickle.PicklingError):
        return b""


class _WireSpy:
    """The headers and request lines the stand-ins received (on the server side)."""

    def __init__(self) -> None:
        import http.server

        self.seen: list[tuple[str, dict[str, str]]] = []
        self._cls = http.server.BaseHTTPRequestHandler
        self._orig = self._cls.parse_request
        spy = self

        def parse(handler: Any) -> bool:
            ok = spy._orig(handler)
            spy.seen.append((handler.path, dict(handler.headers.items())))
            return ok

        self._cls.parse_request = parse  # type: ignore[method-assign]

    def close(self) -> None:
        self._cls.parse_request = self._orig  # type: ignore[method-assign]


def test_no_planted_secret_in_objects_pickles_or_exception_attributes(
    pair: tuple[OllamaStandIn, OllamaStandIn],
    redis_server_factory: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``vars()`` (recursively through the model, its router, backend configs and pool),
    ``pickle.dumps`` of models, configurations and errors, the attributes of every error a
    failing call raises (httpx requests and responses included) and every logger at DEBUG
    show none of a URL password, a Redis password, an ``Authorization``/``X-API-Key``
    header or a ``client_kwargs`` header; the servers still receive the real values."""
    gpu, cpu = pair
    redis_srv = redis_server_factory(password=REDIS_PW)
    collect = _Collect()
    collect.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(collect)
    root.setLevel(logging.DEBUG)
    for name in ("httpx", "httpcore", "ollama", "langchain", "langchain_ollama", "redis"):
        monkeypatch.setattr(logging.getLogger(name), "level", logging.DEBUG)
    spy = _WireSpy()
    leaks: list[str] = []
    errors: list[BaseException] = []
    models: list[Any] = []
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
                    headers={"Authorization": f"Bearer {TOKEN}", "X-API-Key": KEY},
                    timeouts=FAST,
                ),
            ],
            client_kwargs={"headers": {"X-Extra": EXTRA}},
            shared_state=redis_srv.url,
            background_probes=False,
        )
        models.append(model)
        monkeypatch.setenv("CONTEXTHARBOR_REDIS_URL", redis_srv.url)
        by_env = HybridChatOllama(
            model=MODEL,
            gpu_url=gpu.url.replace("//", f"//alice:{PASSWORD}@"),
            cpu_url=cpu.url.replace("//", f"//alice:{PASSWORD}@"),
            background_probes=False,
        )
        models.append(by_env)
        monkeypatch.delenv("CONTEXTHARBOR_REDIS_URL")
        single = HybridChatOllama(
            model=MODEL, base_url=gpu.url.replace("//", f"//alice:{PASSWORD}@"), timeout=5.0
        )
        models.append(single)
        emb = HybridOllamaEmbeddings(
            model=MODEL, base_url=gpu.url.replace("//", f"//alice:{PASSWORD}@")
        )
        models.append(emb)
        model.refresh()
        assert model.invoke("hi").content  # both servers answer, the secrets on the wire
        gpu.inject(Fault.HTTP_ERROR, status=503, count=1)
        assert model.invoke("hi").content  # the gpu failed: cpu answered
        single.invoke("hi")
        # failing calls: every kind of error a call raises
        gpu.inject(Fault.CUT_MID_STREAM, count=1, after_chunks=2)
        errors.append(_errors_of(lambda: list(single.stream("hi"))))
        gpu.inject(Fault.HTTP_ERROR, status=500, count=1)
        cpu.inject(Fault.HTTP_ERROR, status=500)
        errors.append(_errors_of(lambda: model.invoke("again")))
        cpu.clear_faults()
        cpu.inject(Fault.HTTP_ERROR, status=400, message="bad request")
        gpu.inject(Fault.REFUSE)
        errors.append(_errors_of(lambda: model.invoke("bad")))  # not failed over: as it is
        cpu.clear_faults()
        cpu.inject(Fault.REFUSE)
        model.router.close()
        errors.append(_errors_of(lambda: model.invoke("down")))
        gpu.clear_faults()
        cpu.clear_faults()
        for i, m in enumerate(models):
            # the model, its router (private state), configs, pool and inner clients; the
            # redis client is redis-py's own (see _redis_client_type)
            leaks += _walk(m, f"models[{i}]", skip=(_redis_client_type(),))
            leaks += [f"pickle models[{i}]: {s}" for s in _held(_pickled(m))]
            leaks += [f"pprint vars models[{i}]: {s}" for s in _held(pprint.pformat(vars(m)))]
        for c in model.backend_configs + single.backend_configs:
            leaks += _walk(c, f"config {c.name}")
            leaks += [f"pickle config {c.name}: {s}" for s in _held(_pickled(c))]
        leaks += [f"pprint vars model: {s}" for s in _held(pprint.pformat(model.__dict__))]
        for i, err in enumerate(errors):
            leaks += _walk(err, f"errors[{i}]")
            dumped = pickle.dumps(err)  # errors pickle, with their masked requests
            leaks += [f"pickle errors[{i}]: {s}" for s in _held(dumped)]
            leaks += _walk(pickle.loads(dumped), f"unpickled errors[{i}]")
            leaks += [f"str errors[{i}]: {s}" for s in _held(str(err) + repr(err))]
    finally:
        spy.close()
        for m in models:
            m.close()
        root.removeHandler(collect)
        root.setLevel(old_level)
    leaks += [f"log: {s}" for t in collect.texts for s in _held(t)]
    # the errors are the ones claimed, with httpx requests on them to check
    assert isinstance(errors[0], StreamInterruptedError), errors
    assert any(isinstance(e, AllBackendsFailedError) for e in errors), errors
    assert _requests_on(errors), "no httpx Request reachable from the errors"
    assert any(t.startswith("httpx ") for t in collect.texts), "no httpx log line captured"
    # the real values reached the servers
    cpu_seen = [h for p, h in spy.seen if h.get("X-API-Key") == KEY]
    assert cpu_seen and all(h.get("Authorization") == f"Bearer {TOKEN}" for h in cpu_seen)
    assert all(h.get("X-Extra") == EXTRA for h in cpu_seen), cpu_seen[:1]
    assert any(h.get("Authorization") == f"Basic {BASIC}" for _, h in spy.seen)
    assert not leaks, "\n".join(sorted(set(leaks)))[:4000]


def _redis_client_type() -> type:
    """Not walked: redis-py keeps the password it authenticates with in its connection
    pool's ``connection_kwargs`` (a ``credential_provider`` holding a secret would avoid
    it; that is the fleet store's client, not a URL field)."""
    import redis

    return redis.Redis


def _requests_on(errors: list[BaseException]) -> list[httpx.Request]:
    out: list[httpx.Request] = []
    todo = list(errors)
    seen: set[int] = set()
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        out += [v for v in vars(e).values() if isinstance(v, httpx.Request)]
        todo += [x for x in (e.__cause__, e.__context__) if x is not None]
        todo += [x for x in getattr(e, "exceptions", ()) if isinstance(x, BaseException)]
    return out


@pytest.mark.parametrize(
    "params", [{"token": QUERY}, [("token", QUERY)], f"token={QUERY}"], ids=["dict", "pairs", "str"]
)
def test_query_parameters_in_client_kwargs_are_refused_like_a_query_in_base_url(
    params: Any,
) -> None:
    """httpx logs every request URL with its query at INFO: a token in ``params`` would be
    printed on each request. Refused as ``?token=`` in ``base_url`` is, never quoted."""
    texts: list[str] = []
    with pytest.raises(ConfigurationError, match="must not set params") as info:
        HybridChatOllama(
            model=MODEL, base_url="http://127.0.0.1:1", client_kwargs={"params": params}
        )
    texts.append(str(info.value))
    with pytest.raises(ConfigurationError, match="must not set params") as info2:
        BackendConfig(name="a", base_url="http://127.0.0.1:1", client_kwargs={"params": params})
    texts.append(str(info2.value))
    assert "token=***" in texts[0] and "token=***" in texts[1], texts
    assert not _held("\n".join(texts)), texts


def test_secret_url_masks_every_view_and_refuses_pickle() -> None:
    url = f"http://alice:{PASSWORD}@127.0.0.1:1"
    cfg = BackendConfig(name="a", base_url=url)
    held = cfg.base_url
    assert isinstance(held, SecretUrl) and held == url and held.get_secret_value() == url
    for text in (
        repr(held),
        str(held),
        f"{held}",
        "%s %r" % (held, held),  # noqa: UP031 - logging's way of formatting
        pprint.pformat(vars(cfg)),
    ):
        assert PASSWORD not in text and "***@127.0.0.1:1" in text, text
    with pytest.raises(TypeError, match="not pickled"):
        pickle.dumps(cfg)
    with pytest.raises(TypeError, match="not pickled"):
        pickle.dumps(
            BackendConfig(name="b", base_url="http://127.0.0.1:1", headers={"X-Api-Key": KEY})
        )
    plain = BackendConfig(name="c", base_url="http://127.0.0.1:1")
    assert type(plain.base_url) is str
    assert pickle.loads(pickle.dumps(plain)).base_url == "http://127.0.0.1:1"
    assert copy.deepcopy(cfg).base_url.get_secret_value() == url
    assert cfg.model_copy(deep=True).request_headers["Authorization"] == f"Basic {BASIC}"


def test_async_calls_send_the_secret_headers_too(pair: tuple[OllamaStandIn, OllamaStandIn]) -> None:
    """The auth flow that keeps headers as ``SecretStr`` until a request leaves serves the
    async clients as it serves the sync ones."""
    import asyncio

    gpu, cpu = pair
    spy = _WireSpy()
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
                    headers={"X-API-Key": KEY},
                    timeouts=FAST,
                ),
            ],
            background_probes=False,
        )
        model.refresh()

        async def calls() -> None:
            await model.ainvoke("hi")
            gpu.inject(Fault.HTTP_ERROR, status=503, count=1)
            await model.ainvoke("hi")  # the gpu failed: the cpu answered
            await model.aclose()

        asyncio.run(calls())
        model.close()
    finally:
        spy.close()
    chats = [h for p, h in spy.seen if p == "/api/chat"]
    assert any(h.get("Authorization") == f"Basic {BASIC}" for h in chats), chats
    assert any(h.get("X-API-Key") == KEY for h in chats), chats
