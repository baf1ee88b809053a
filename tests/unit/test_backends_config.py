"""Backend configuration: URL validation, redaction, BackendConfig, env and HybridChatOllama.

Everything here runs without network: a socket guard fails any connect attempt.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydantic
import pytest

from langchain_contextharbor import (
    DEFAULT_CPU_URL,
    DEFAULT_GPU_URL,
    BackendConfig,
    ConfigurationError,
    HybridChatOllama,
    Timeouts,
    backends_from_env,
    redact_url,
)
from langchain_contextharbor.backends import coerce_backends, validate_base_url

SECRET = "s3cr3t-pw"
TOKEN = "tok-0123456789"


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Fail (and record) any attempt to connect or resolve a name."""
    calls: list[Any] = []

    def guard(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        raise AssertionError(f"network I/O attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", guard)
    monkeypatch.setattr(socket.socket, "connect_ex", guard)
    monkeypatch.setattr(socket, "create_connection", guard)
    monkeypatch.setattr(socket, "getaddrinfo", guard)
    yield calls
    assert calls == [], "construction or validation touched the network"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OLLAMA_GPU_URL", raising=False)
    monkeypatch.delenv("OLLAMA_CPU_URL", raising=False)
    monkeypatch.delenv("OLLAMA_HOST", raising=False)


# --------------------------------------------------------------------------- validate_base_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:11434", "http://127.0.0.1:11434"),
        ("http://127.0.0.1:11434/", "http://127.0.0.1:11434"),
        ("  http://localhost:11435  ", "http://localhost:11435"),
        ("https://ollama.example.com/prefix/", "https://ollama.example.com/prefix"),
        ("http://[::1]:11434", "http://[::1]:11434"),
        ("http://gpu-box", "http://gpu-box"),
        ("http://host:65535", "http://host:65535"),
        ("http://host:1", "http://host:1"),
        (f"http://admin:{SECRET}@host:11434", f"http://admin:{SECRET}@host:11434"),
    ],
)
def test_validate_base_url_accepts(url: str, expected: str) -> None:
    assert validate_base_url(url) == expected


@pytest.mark.parametrize(
    ("url", "shown", "why"),
    [
        ("localhost:11434", "'localhost:11434'", "has no scheme"),
        ("127.0.0.1:11434", "'127.0.0.1:11434'", "has no scheme"),
        ("ftp://x", "'ftp://x'", "scheme must be http or https"),
        ("ws://host:11434", "'ws://host:11434'", "scheme must be http or https"),
        ("http://", "'http://'", "has no host"),
        ("http://:11434", "'http://:11434'", "has no host"),
        ("http://host:abc", "'http://host:abc'", "not a valid URL"),
        ("http://h/?q=1", "'http://h/?q=***'", "must not have a query or fragment"),
        ("http://h#frag", "'http://h#***'", "must not have a query or fragment"),
        (f"admin:{SECRET}@localhost:11434", "'***@localhost:11434'", "has no scheme"),
        (f"http://admin:{SECRET}@host:abc", "'http://***@host:abc'", "not a valid URL"),
        (f"ftp://admin:{SECRET}@host", "'ftp://***@host'", "scheme must be http or https"),
        (f"http://admin:{SECRET}@h/?q=1", "'http://***@h/?q=***'", "query or fragment"),
    ],
)
def test_validate_base_url_rejects_naming_the_url(url: str, shown: str, why: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        validate_base_url(url)
    msg = str(info.value)
    assert shown in msg and why in msg, msg
    assert SECRET not in msg
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("url", ["", "   ", None, 11434, b"http://h"])
def test_validate_base_url_rejects_non_strings_and_blank(url: Any) -> None:
    with pytest.raises(ConfigurationError, match="must be a non-empty string"):
        validate_base_url(url)


def test_validate_base_url_names_what() -> None:
    with pytest.raises(ConfigurationError, match=r"^OLLAMA_CPU_URL 'ftp://x': scheme"):
        validate_base_url("ftp://x", what="OLLAMA_CPU_URL")


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("http://host:99999", id="port>65535"),
        pytest.param("http://host:65536", id="port=65536"),
        pytest.param("http://host:0", id="port=0"),
        pytest.param("http://host:-1", id="port=-1"),
        pytest.param("http://ho st:11434", id="space-in-host"),
    ],
)
def test_validate_base_url_rejects_bad_port_and_host(url: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        validate_base_url(url)
    assert url.split("//")[1].split(":")[0] in str(info.value)


def test_validate_base_url_never_leaks_a_password_with_a_slash() -> None:
    with pytest.raises(ConfigurationError) as info:
        validate_base_url("http://admin:pa/ss-" + SECRET + "@host:11434")
    assert SECRET not in str(info.value)


# --------------------------------------------------------------------------------- redact_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:11434", "http://127.0.0.1:11434"),
        ("https://host/prefix/api", "https://host/prefix/api"),
        (f"http://admin:{SECRET}@host:11434", "http://***@host:11434"),
        (f"https://admin:{SECRET}@host:443/prefix", "https://***@host:443/prefix"),
        (f"http://{TOKEN}@host", "http://***@host"),
        (f"http://admin:{SECRET}@[::1]:11434", "http://***@[::1]:11434"),
        (f"http://admin:p@ss{SECRET}@host:1", "http://***@host:1"),
        (f"http://admin:p%40ss{SECRET}@host:1", "http://***@host:1"),
        (f"http://admin:p?{SECRET}@host:1", "http://***@host:1"),
        (f"http://admin:{SECRET}@host?x=1", "http://***@host?x=***"),
        (f"HTTP://ADMIN:{SECRET}@HOST", "HTTP://***@HOST"),
        (f"admin:{SECRET}@localhost:11434", "***@localhost:11434"),
        (f"ftp://admin:{SECRET}@host", "ftp://***@host"),
        (f"http://admin:{SECRET}@", "http://***@"),
        ("localhost:11434", "localhost:11434"),
        ("http://", "http://"),
        ("", ""),
        ("not a url at all", "not a url at all"),
        (None, "<invalid url>"),
        (11434, "<invalid url>"),
        pytest.param(
            f"http://admin:pa/{SECRET}@host:1",
            "http://***@host:1",
            id="slash-in-password",
        ),
        pytest.param(
            f"//admin:{SECRET}@host:1",
            "//***@host:1",
            id="scheme-relative",
        ),
        pytest.param(
            f"http:/admin:{SECRET}@host:1",
            "http:/***@host:1",
            id="one-slash-typo",
        ),
    ],
)
def test_redact_url(url: Any, expected: str) -> None:
    got = redact_url(url)
    assert got == expected
    assert SECRET not in got and TOKEN not in got


def test_redact_url_is_idempotent() -> None:
    once = redact_url(f"http://admin:{SECRET}@host:1")
    assert redact_url(once) == once


# ------------------------------------------------------------------------------ BackendConfig


def test_backend_config_defaults() -> None:
    b = BackendConfig(name=" gpu0 ", base_url="http://127.0.0.1:11434/")
    assert (b.name, b.base_url, b.kind, b.priority, b.max_parallel) == (
        "gpu0",
        "http://127.0.0.1:11434",
        "gpu",
        0,
        1,
    )
    assert (b.max_memory_gb, b.headers, b.verify, b.client_kwargs) == (None, {}, True, {})
    assert b.timeouts == Timeouts()
    assert (b.timeouts.connect, b.timeouts.first_token, b.timeouts.idle, b.timeouts.probe) == (
        2.0,
        120.0,
        30.0,
        1.5,
    )
    assert b.is_gpu and b.is_local
    assert BackendConfig(name="c", base_url=DEFAULT_CPU_URL, kind="cpu").is_gpu is False


@pytest.mark.parametrize(
    ("url", "local"),
    [
        ("http://127.0.0.1:11434", True),
        ("http://127.0.1.1:11434", True),
        ("http://localhost:11434", True),
        ("http://[::1]:11434", True),
        ("http://10.0.0.5:11434", False),
        ("https://ollama.example.com", False),
        ("http://0.0.0.0:11434", False),
    ],
)
def test_backend_config_is_local(url: str, local: bool) -> None:
    assert BackendConfig(name="b", base_url=url).is_local is local


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": ""}, "name"),
        ({"name": "   "}, "name"),
        ({"base_url": "localhost:11434"}, "has no scheme"),
        ({"base_url": "ftp://x"}, "scheme must be http or https"),
        ({"base_url": "http://h/?q=1"}, "query or fragment"),
        ({"max_memory_gb": -1}, "max_memory_gb"),
        ({"max_memory_gb": 0}, "max_memory_gb"),
        ({"max_memory_gb": math.nan}, "max_memory_gb"),
        ({"max_memory_gb": math.inf}, "max_memory_gb"),
        ({"max_memory_gb": -math.inf}, "max_memory_gb"),
        ({"max_parallel": 0}, "max_parallel"),
        ({"max_parallel": -1}, "max_parallel"),
        ({"kind": "tpu"}, "kind"),
        ({"colour": "blue"}, "colour"),
        ({"client_kwargs": {"base_url": "http://other"}}, "may not set \\['base_url'\\]"),
        ({"client_kwargs": {"host": "http://other"}}, "may not set \\['host'\\]"),
        ({"client_kwargs": {"headers": {"a": "b"}}}, "may not set \\['headers'\\]"),
        ({"client_kwargs": {"timeout": 3}}, "may not set \\['timeout'\\]"),
        ({"client_kwargs": {"timeout": 3, "headers": {}}}, "\\['headers', 'timeout'\\]"),
        ({"timeouts": {"connect": 0}}, "timeouts.connect"),
        ({"timeouts": {"idle": -1}}, "timeouts.idle"),
        ({"timeouts": {"first_token": math.nan}}, "timeouts.first_token"),
        ({"timeouts": {"probe": math.inf}}, "timeouts.probe"),
        ({"timeouts": {"read": 3}}, "read"),
    ],
)
def test_backend_config_rejects(kwargs: dict[str, Any], match: str) -> None:
    base: dict[str, Any] = {"name": "b", "base_url": "http://127.0.0.1:11434"}
    with pytest.raises(ValueError, match=match):
        BackendConfig(**{**base, **kwargs})


def test_backend_config_accepts_other_client_kwargs(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    b = BackendConfig(
        name="b",
        base_url="https://h",
        client_kwargs={"trust_env": False},
        verify=str(ca),
        max_memory_gb=24,
        priority=-1,
        max_parallel=4,
    )
    assert b.client_kwargs == {"trust_env": False}
    assert b.max_memory_gb == 24.0 and isinstance(b.max_memory_gb, float)


def test_backend_config_rejects_a_missing_ca_bundle(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no such CA bundle"):
        BackendConfig(name="b", base_url="https://h", verify=str(tmp_path / "missing.pem"))


def test_backend_config_is_frozen() -> None:
    b = BackendConfig(name="b", base_url="http://h")
    with pytest.raises(pydantic.ValidationError):
        b.name = "c"


def test_backend_config_repr_hides_password_and_headers() -> None:
    b = BackendConfig(
        name="remote",
        base_url=f"https://admin:{SECRET}@gpu.example.com:11434",
        headers={"X-Api-Key": f"Bearer {TOKEN}"},
        client_kwargs={"trust_env": False},
    )
    texts = (repr(b), str(b), f"{b}", f"{b!r}", repr([b]), str({"b": b}), b.safe_url)
    texts += (b.model_dump_json(), str(b.model_dump()), repr(b.headers))
    for text in texts:
        assert SECRET not in text and TOKEN not in text, text
    assert "X-Api-Key" not in repr(b)
    assert repr(b) == (
        "BackendConfig(name='remote', base_url='https://***@gpu.example.com:11434', "
        "kind='gpu', priority=0, max_parallel=1)"
    )
    # the real values are kept for use
    assert SECRET in b.base_url and b.headers["X-Api-Key"].get_secret_value().endswith(TOKEN)
    assert b.request_headers["X-Api-Key"].endswith(TOKEN)
    assert b.request_headers["Authorization"].startswith("Basic ")  # from the URL
    assert SECRET not in b.plain_url and "admin" not in b.plain_url


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"base_url": f"http://admin:{SECRET}@host:abc"}, id="bad-url-password"),
        pytest.param(
            {"client_kwargs": {"timeout": 3}, "headers": {"Authorization": f"Bearer {TOKEN}"}},
            id="bad-kwargs-headers",
        ),
    ],
)
def test_backend_config_errors_hide_credentials(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError) as info:
        BackendConfig(**{"name": "b", "base_url": "http://h", **kwargs})
    assert SECRET not in str(info.value) and TOKEN not in str(info.value)


# -------------------------------------------------------------------------- backends_from_env


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, [("gpu", DEFAULT_GPU_URL, "gpu"), ("cpu", DEFAULT_CPU_URL, "cpu")]),
        ({"OLLAMA_GPU_URL": ""}, [("cpu", DEFAULT_CPU_URL, "cpu")]),
        ({"OLLAMA_CPU_URL": ""}, [("gpu", DEFAULT_GPU_URL, "gpu")]),
        ({"OLLAMA_CPU_URL": "   "}, [("gpu", DEFAULT_GPU_URL, "gpu")]),
        ({"OLLAMA_GPU_URL": "", "OLLAMA_CPU_URL": ""}, []),
        (
            {"OLLAMA_GPU_URL": "http://10.0.0.2:11434/", "OLLAMA_CPU_URL": "https://cpu.lan"},
            [("gpu", "http://10.0.0.2:11434", "gpu"), ("cpu", "https://cpu.lan", "cpu")],
        ),
        ({"UNRELATED": "x"}, [("gpu", DEFAULT_GPU_URL, "gpu"), ("cpu", DEFAULT_CPU_URL, "cpu")]),
    ],
)
def test_backends_from_env(env: dict[str, str], expected: list[tuple[str, str, str]]) -> None:
    got = backends_from_env(env)
    assert [(b.name, b.base_url, b.kind) for b in got] == expected


def test_defaults_are_loopback_ports() -> None:
    assert (DEFAULT_GPU_URL, DEFAULT_CPU_URL) == (
        "http://127.0.0.1:11434",
        "http://127.0.0.1:11435",
    )


@pytest.mark.parametrize(
    ("env", "kwargs", "expected"),
    [
        (
            {"OLLAMA_GPU_URL": "http://a:1"},
            {"gpu_url": "http://b:2"},
            ["http://b:2", DEFAULT_CPU_URL],
        ),
        ({"OLLAMA_GPU_URL": "http://a:1"}, {"gpu_url": ""}, [DEFAULT_CPU_URL]),
        ({"OLLAMA_CPU_URL": ""}, {"cpu_url": "http://c:3"}, [DEFAULT_GPU_URL, "http://c:3"]),
        ({}, {"gpu_url": "", "cpu_url": ""}, []),
        ({"OLLAMA_GPU_URL": ""}, {"gpu_url": None}, [DEFAULT_CPU_URL]),
    ],
)
def test_backends_from_env_explicit_args_win(
    env: dict[str, str], kwargs: dict[str, Any], expected: list[str]
) -> None:
    assert [b.base_url for b in backends_from_env(env, **kwargs)] == expected


def test_backends_from_env_reads_os_environ(
    monkeypatch: pytest.MonkeyPatch, clean_env: None
) -> None:
    monkeypatch.setenv("OLLAMA_GPU_URL", "")
    monkeypatch.setenv("OLLAMA_CPU_URL", "http://127.0.0.1:21435")
    assert [b.base_url for b in backends_from_env()] == ["http://127.0.0.1:21435"]


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"OLLAMA_GPU_URL": "localhost:11434"}, r"^OLLAMA_GPU_URL='localhost:11434' is not usable"),
        ({"OLLAMA_CPU_URL": "ftp://x"}, r"^OLLAMA_CPU_URL='ftp://x' is not usable"),
        ({"OLLAMA_GPU_URL": f"http://u:{SECRET}@h:abc"}, r"^OLLAMA_GPU_URL='http://\*\*\*@h:abc'"),
    ],
)
def test_backends_from_env_rejects_malformed(env: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        backends_from_env(env)


def test_backends_from_env_error_hides_password() -> None:
    with pytest.raises(ConfigurationError) as info:
        backends_from_env({"OLLAMA_GPU_URL": f"http://u:{SECRET}@h:abc"})
    assert SECRET not in str(info.value)


# ---------------------------------------------------------------------------- coerce_backends


def test_coerce_backends_mixed_items() -> None:
    got = coerce_backends(
        [
            BackendConfig(name="a", base_url="http://a:1"),
            {"name": "b", "base_url": "http://b:2", "kind": "cpu"},
        ]
    )
    assert [(b.name, b.kind) for b in got] == [("a", "gpu"), ("b", "cpu")]
    assert all(isinstance(b, BackendConfig) for b in got)


@pytest.mark.parametrize(
    ("items", "match"),
    [
        ([], "no backend configured"),
        (
            [{"name": "a", "base_url": "http://h:1"}, {"name": "a", "base_url": "http://h:2"}],
            "duplicate backend name 'a'",
        ),
        (
            [{"name": "a", "base_url": "http://h:1"}, {"name": " a ", "base_url": "http://h:2"}],
            "duplicate backend name 'a'",
        ),
        (
            [{"name": "a", "base_url": "http://h:1"}, {"name": "b", "base_url": "http://h:1/"}],
            "backends 'a' and 'b' have the same URL 'http://h:1'",
        ),
        (
            [{"name": "a", "base_url": "http://h:1"}, {"name": "b", "base_url": "HTTP://H:1"}],
            "same URL",
        ),
        (
            [
                {"name": "a", "base_url": f"http://u:{SECRET}@h:1"},
                {"name": "b", "base_url": f"http://u:{SECRET}@h:1"},
            ],
            r"same URL 'http://\*\*\*@h:1'",
        ),
        (
            [{"name": "a", "base_url": "http://h:1"}, 42],
            "backends\\[1\\] must be a BackendConfig or a dict, got int",
        ),
        (["http://h:1"], "backends\\[0\\] must be a BackendConfig or a dict, got str"),
        ([{"name": "a", "base_url": "ftp://x"}], "backends\\[0\\] is invalid"),
        ([{"name": "a"}], "backends\\[0\\] is invalid"),
    ],
)
def test_coerce_backends_rejects(items: list[Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match) as info:
        coerce_backends(items)
    assert SECRET not in str(info.value)


def test_coerce_backends_error_hides_credentials() -> None:
    with pytest.raises(ConfigurationError) as info:
        coerce_backends([{"name": "a", "base_url": f"http://u:{SECRET}@h:abc"}])
    assert SECRET not in str(info.value)


# --------------------------------------------------------------- HybridChatOllama construction


def test_socket_guard_is_effective(no_network: list[Any]) -> None:
    """The guard the construction tests rely on really stops a connect."""
    with pytest.raises(AssertionError, match="network I/O attempted"):
        socket.create_connection(("127.0.0.1", 9))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        with pytest.raises(AssertionError, match="network I/O attempted"):
            sock.connect(("127.0.0.1", 9))
    finally:
        sock.close()
    assert len(no_network) == 2
    no_network.clear()


def test_construction_does_no_network_io(clean_env: None, no_network: list[Any]) -> None:
    llm = HybridChatOllama(model="llama3.1:8b")
    assert [(c.name, c.base_url, c.kind) for c in llm.backend_configs] == [
        ("gpu", DEFAULT_GPU_URL, "gpu"),
        ("cpu", DEFAULT_CPU_URL, "cpu"),
    ]
    HybridChatOllama(
        model="llama3.1:8b",
        backends=[
            {"name": "remote", "base_url": "https://gpu.example.com", "max_memory_gb": 24},  # type: ignore[list-item]
        ],
    )
    assert no_network == []


def test_construction_from_env(monkeypatch: pytest.MonkeyPatch, clean_env: None) -> None:
    monkeypatch.setenv("OLLAMA_GPU_URL", "")
    monkeypatch.setenv("OLLAMA_CPU_URL", "http://127.0.0.1:21435/")
    llm = HybridChatOllama(model="m")
    assert [(c.name, c.base_url) for c in llm.backend_configs] == [
        ("cpu", "http://127.0.0.1:21435")
    ]


def test_explicit_backends_ignore_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_GPU_URL", "localhost-without-scheme")
    llm = HybridChatOllama(model="m", backends=[BackendConfig(name="x", base_url="http://x:1")])
    assert [c.name for c in llm.backend_configs] == ["x"]


def test_timeout_sets_default_timeouts(clean_env: None) -> None:
    own = Timeouts(first_token=5, idle=6)
    llm = HybridChatOllama(
        model="m",
        timeout=42,
        backends=[
            BackendConfig(name="a", base_url="http://a:1"),
            BackendConfig(name="b", base_url="http://b:1", timeouts=own),
        ],
    )
    a, b = llm.backend_configs
    assert (a.timeouts.first_token, a.timeouts.idle) == (42.0, 42.0)
    assert b.timeouts == own


# (kwargs, env, message fragment)
BAD_CONSTRUCTION: list[tuple[str, dict[str, Any], dict[str, str], str]] = [
    (
        "no backend (env both empty)",
        {},
        {"OLLAMA_GPU_URL": "", "OLLAMA_CPU_URL": ""},
        "no backend configured",
    ),
    ("no backend (args both empty)", {"gpu_url": "", "cpu_url": ""}, {}, "no backend configured"),
    ("empty backends list", {"backends": []}, {}, "no backend configured"),
    (
        "gpu_url without scheme",
        {"gpu_url": "localhost:11434"},
        {},
        "OLLAMA_GPU_URL='localhost:11434' is not usable",
    ),
    (
        "env cpu url with bad scheme",
        {},
        {"OLLAMA_CPU_URL": "ftp://x"},
        "OLLAMA_CPU_URL='ftp://x' is not usable",
    ),
    (
        "backend url with query",
        {"backends": [{"name": "a", "base_url": "http://h/?q=1"}]},
        {},
        "query or fragment",
    ),
    (
        "duplicate backend names",
        {
            "backends": [
                {"name": "a", "base_url": "http://h:1"},
                {"name": "a", "base_url": "http://h:2"},
            ]
        },
        {},
        "duplicate backend name 'a'",
    ),
    (
        "duplicate backend urls",
        {
            "backends": [
                {"name": "a", "base_url": "http://h:1"},
                {"name": "b", "base_url": "http://h:1/"},
            ]
        },
        {},
        "same URL",
    ),
    ("negative model size", {"model_sizes": {"llama3.1:8b": -1}}, {}, "llama3.1:8b"),
    ("NaN model size", {"model_sizes": {"llama3.1:8b": math.nan}}, {}, "llama3.1:8b"),
    ("infinite model size", {"model_sizes": {"big": math.inf}}, {}, "big"),
    ("size_threshold_gb 0", {"size_threshold_gb": 0}, {}, "size_threshold_gb"),
    ("size_threshold_gb negative", {"size_threshold_gb": -8}, {}, "size_threshold_gb"),
    ("size_threshold_gb NaN", {"size_threshold_gb": math.nan}, {}, "size_threshold_gb"),
    ("size_threshold_gb inf", {"size_threshold_gb": math.inf}, {}, "size_threshold_gb"),
    ("timeout 0", {"timeout": 0}, {}, "timeout"),
    ("timeout NaN", {"timeout": math.nan}, {}, "timeout"),
    ("max_retries negative", {"max_retries": -1}, {}, "max_retries"),
    ("empty model", {"model": ""}, {}, "model"),
    ("blank model", {"model": "   "}, {}, "model"),
]


@pytest.mark.parametrize(
    ("kwargs", "env", "match"),
    [pytest.param(k, e, m, id=i) for i, k, e, m in BAD_CONSTRUCTION],
)
def test_construction_rejects(
    monkeypatch: pytest.MonkeyPatch,
    clean_env: None,
    kwargs: dict[str, Any],
    env: dict[str, str],
    match: str,
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValueError) as info:
        HybridChatOllama(**{"model": "llama3.1:8b", **kwargs})
    assert match in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "env", "match"),
    [pytest.param(k, e, m, id=i) for i, k, e, m in BAD_CONSTRUCTION if "model" not in k],
)
def test_construction_raises_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
    clean_env: None,
    kwargs: dict[str, Any],
    env: dict[str, str],
    match: str,
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigurationError, match=match):
        HybridChatOllama(**{"model": "llama3.1:8b", **kwargs})


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"timeout": -1, "timeouts": Timeouts()}, id="timeout<0 with timeouts"),
        pytest.param({"timeout": math.nan, "timeouts": Timeouts()}, id="timeout NaN with timeouts"),
        pytest.param({"probe_ttl": -1}, id="probe_ttl<0"),
        pytest.param({"probe_ttl": math.nan}, id="probe_ttl NaN"),
        pytest.param({"oom_cooldown": math.nan}, id="oom_cooldown NaN"),
        pytest.param({"oom_cooldown": -5}, id="oom_cooldown<0"),
    ],
)
def test_construction_rejects_other_bad_numbers(clean_env: None, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        HybridChatOllama(model="m", **kwargs)


def test_model_repr_and_str_never_show_credentials(clean_env: None) -> None:
    by_url = HybridChatOllama(
        model="m",
        gpu_url=f"http://admin:{SECRET}@gpu.lan:11434",
        cpu_url=f"http://admin:{SECRET}x@cpu.lan:11435",
    )
    by_backend = HybridChatOllama(
        model="m",
        backends=[
            BackendConfig(
                name="a",
                base_url=f"https://admin:{SECRET}@a.lan",
                headers={"X-Token": f"Bearer {TOKEN}"},
            ),
            {"name": "b", "base_url": "http://b.lan:1", "headers": {"X-Api-Key": TOKEN}},  # type: ignore[list-item]
        ],
    )
    for llm in (by_url, by_backend):
        texts = [
            repr(llm),
            str(llm),
            f"{llm}",
            repr(llm.backend_configs),
            str(llm._identifying_params),
            str(llm._get_invocation_params()),
            str(llm.to_json()),
            llm.model_dump_json(),
            str(llm.model_dump()),
        ]
        for text in texts:
            assert SECRET not in text and TOKEN not in text, text
    assert "***@gpu.lan:11434" in str(by_url._identifying_params)
    # the real credentials are still used
    assert by_backend.backend_configs[0].request_headers["X-Token"] == f"Bearer {TOKEN}"


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"gpu_url": f"http://admin:{SECRET}@gpu.lan:abc"}, id="gpu_url"),
        pytest.param(
            {"backends": [{"name": "a", "base_url": f"http://admin:{SECRET}@a:abc"}]},
            id="backend-url",
        ),
        pytest.param(
            {
                "backends": [
                    {"name": "a", "base_url": "http://a:1"},
                    {"name": "a", "base_url": "http://b:1", "headers": {"X-Api-Key": TOKEN}},
                ]
            },
            id="duplicate-with-headers",
        ),
    ],
)
def test_construction_errors_never_show_credentials(
    clean_env: None, kwargs: dict[str, Any]
) -> None:
    with pytest.raises(ValueError) as info:
        HybridChatOllama(model="m", **kwargs)
    assert SECRET not in str(info.value) and TOKEN not in str(info.value)


@pytest.mark.parametrize(
    ("value", "url"),
    [
        ("127.0.0.1:11435", "http://127.0.0.1:11435"),
        ("gpu-box", "http://gpu-box:11434"),
        (":11500", "http://127.0.0.1:11500"),
        ("0.0.0.0", "http://0.0.0.0:11434"),
        ("[::1]:11434", "http://[::1]:11434"),
        ("::1", "http://[::1]:11434"),
        ("https://ollama.example.com", "https://ollama.example.com"),
        ("http://h:1/prefix/", "http://h:1/prefix"),
    ],
)
def test_ollama_host_url_takes_ollamas_forms(value: str, url: str) -> None:
    from langchain_contextharbor import ollama_host_url

    assert ollama_host_url(value) == url


def test_ollama_host_is_the_gpu_default_only_when_ollama_gpu_url_is_unset() -> None:
    env = {"OLLAMA_HOST": "127.0.0.1:12000", "OLLAMA_CPU_URL": ""}
    assert [b.base_url for b in backends_from_env(env)] == ["http://127.0.0.1:12000"]
    env["OLLAMA_GPU_URL"] = "http://127.0.0.1:13000"
    assert [b.base_url for b in backends_from_env(env)] == ["http://127.0.0.1:13000"]
    with pytest.raises(ConfigurationError, match=r"OLLAMA_HOST 'http://\*\*\*@h:1\?x=\*\*\*'"):
        backends_from_env({"OLLAMA_HOST": f"http://u:{SECRET}@h:1?x"})
