"""``contextharbor serve``'s options and start-up (no starlette import until it runs)."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
import textwrap
from collections.abc import Sequence
from typing import Any

import httpx

from langchain_contextharbor.backends import BackendConfig, redact_url
from langchain_contextharbor.errors import ConfigurationError

__all__ = [
    "API_KEY_ENV",
    "add_serve_parser",
    "bind_warning",
    "is_loopback",
    "resolve_serve_backends",
    "run_serve",
]

API_KEY_ENV = "CONTEXTHARBOR_SERVE_API_KEY"
"""Bearer key(s) the proxy requires, comma-separated (``--api-key`` adds more)."""
DEFAULT_PORT = 11400  # the same as _app.DEFAULT_PORT (this module must not import starlette)
DEFAULT_MAX_BODY_MB = 32

logger = logging.getLogger("langchain_contextharbor.serve")


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0-65535, got {text!r}")
    return value


def _mib(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of MiB: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0 MiB, got {text!r}")
    return value


def _backend(text: str) -> tuple[str, str]:
    name, sep, url = text.partition("=")
    if not sep or not name.strip() or not url.strip():
        raise argparse.ArgumentTypeError("expected NAME=URL, e.g. gpu=http://127.0.0.1:11434")
    return name.strip(), url.strip()


def add_serve_parser(
    sub: Any, *, parents: Sequence[argparse.ArgumentParser], epilog: str, formatter: Any
) -> argparse.ArgumentParser:
    """Register ``serve`` on the CLI's subparsers."""
    p: argparse.ArgumentParser = sub.add_parser(
        "serve",
        parents=list(parents),
        formatter_class=formatter,
        epilog=epilog,
        help="serve the router as an Ollama- and OpenAI-compatible endpoint",
        description=textwrap.fill(
            "Serve Ollama's API (/api/chat, /api/generate, /api/embed, /api/tags, ...) and "
            "OpenAI's (/v1/chat/completions, /v1/embeddings, /v1/models) on one address, "
            "routing every request over the backends with the library's router: failover, "
            "breakers, timeouts, a stream never repeats text. Needs the 'serve' extra.",
            width=79,
        ),
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1; 0.0.0.0 opens it to the network: set a key)",
    )
    p.add_argument(
        "--port",
        type=_port,
        default=DEFAULT_PORT,
        help=f"port to bind (default {DEFAULT_PORT})",
    )
    p.add_argument(
        "--backend",
        action="append",
        type=_backend,
        metavar="NAME=URL",
        default=None,
        help="a backend (repeatable; replaces --gpu-url/--cpu-url and the env); a name "
        "containing 'cpu' is a CPU server, any other a GPU server",
    )
    p.add_argument(
        "--api-key",
        action="append",
        default=None,
        metavar="KEY",
        help=f"require 'Authorization: Bearer KEY' (repeatable; env {API_KEY_ENV}, "
        "comma-separated)",
    )
    p.add_argument(
        "--max-body-mb",
        type=_mib,
        default=DEFAULT_MAX_BODY_MB,
        metavar="MIB",
        help=f"largest request body accepted, in MiB (default {DEFAULT_MAX_BODY_MB}); "
        "larger ones get 413",
    )
    p.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="uvicorn's log level (default info)",
    )
    return p


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind_warning(host: str, keys: Sequence[str]) -> str | None:
    """The warning for a bind any other machine can reach without a key, else None."""
    if is_loopback(host) or keys:
        return None
    return (
        f"contextharbor serve: WARNING: listening on {host}, reachable from the network, "
        f"with no API key: anyone who can reach it can use your models. Set --api-key or "
        f"{API_KEY_ENV}, or bind 127.0.0.1."
    )


def api_keys(given: Sequence[str] | None, env: Any = None) -> tuple[str, ...]:
    env = os.environ if env is None else env
    keys = [k.strip() for k in env.get(API_KEY_ENV, "").split(",") if k.strip()]
    keys += [k.strip() for k in given or () if k.strip()]
    return tuple(dict.fromkeys(keys))


def resolve_serve_backends(args: argparse.Namespace) -> list[BackendConfig]:
    """The backends as ``check``/``route`` resolve them (``--gpu-url``/``--cpu-url``, else
    ``OLLAMA_GPU_URL``/``OLLAMA_CPU_URL``, ``--timeout`` as the probe timeout), or the
    ``--backend NAME=URL`` list; a backend that is this proxy's own address is refused."""
    from langchain_contextharbor.health import resolve_backends

    given = getattr(args, "backend", None)
    items: Any = None
    if given:
        items = [
            {"name": n, "base_url": u, "kind": "cpu" if "cpu" in n.lower() else "gpu"}
            for n, u in given
        ]
    configs = resolve_backends(
        items,
        gpu_url=getattr(args, "gpu_url", None),
        cpu_url=getattr(args, "cpu_url", None),
        timeout=getattr(args, "timeout", None),
    )
    for c in configs:
        if _same_address(c.base_url, args.host, args.port):
            raise ConfigurationError(
                f"backend {c.name!r} ({c.safe_url}) is this proxy's own address: requests "
                "would loop (is OLLAMA_HOST pointed at the proxy? set OLLAMA_GPU_URL)"
            )
    return configs


def _same_address(url: str, host: str, port: int) -> bool:
    u = httpx.URL(url)
    uport = u.port or (443 if u.scheme == "https" else 80)
    if uport != port:
        return False
    wildcard = host in ("0.0.0.0", "::", "")
    return u.host == host or ((wildcard or is_loopback(host)) and is_loopback(u.host))


def run_serve(args: argparse.Namespace) -> int:
    """Start the proxy in the foreground until interrupted; the CLI's exit code."""
    try:
        import uvicorn

        from langchain_contextharbor.serve._app import ServeConfig, create_app
    except ImportError as exc:
        print(
            f"contextharbor serve: needs the 'serve' extra ({exc.name} is missing): "
            "pip install 'langchain-contextharbor[serve]'",
            file=sys.stderr,
        )
        return 1
    keys = api_keys(args.api_key)
    try:
        configs = resolve_serve_backends(args)
        config = ServeConfig(
            host=args.host,
            port=args.port,
            api_keys=keys,
            max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        )
        app = create_app(config, backends=configs)
    except ConfigurationError as exc:
        message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        print(f"contextharbor: error: {message}", file=sys.stderr)
        return 1
    warning = bind_warning(args.host, keys)
    if warning:
        print(warning, file=sys.stderr)
    names = ", ".join(f"{c.name}={redact_url(c.safe_url)}" for c in configs)
    print(
        f"contextharbor serve: http://{args.host}:{args.port} -> {names}"
        f"{' (API key required)' if keys else ''}",
        file=sys.stderr,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
