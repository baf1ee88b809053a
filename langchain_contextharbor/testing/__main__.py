"""Run Ollama stand-ins from the command line (``python -m langchain_contextharbor.testing``).

Useful to point a real application, ``curl`` or the ``contextharbor`` CLI at a fake GPU box
and a fake CPU box without installing Ollama, and for tests that want the stand-in in a
separate process (a crash or ``kill -9`` of a whole server)::

    python -m langchain_contextharbor.testing --port 11434 --name gpu --model llama3.2:1b \\
        --model "qwen3:8b?capabilities=completion,tools,thinking" --loaded llama3.2:1b
    contextharbor-standin --port 11435 --name cpu --gpu-fraction 0 --token-delay 0.05

A ``--model`` value is a name, optionally followed by ``?key=value&key=value`` setting
``StandInModel`` fields (``size``, ``parameter_size``, ``quantization_level``, ``family``,
``capabilities`` as a comma list, ``context_length``, ...). ``--config FILE.json`` reads the
same settings as a JSON object (``models`` may hold objects with ``StandInModel`` fields).

Once listening, one line ``listening on http://HOST:PORT (name)`` goes to stdout (flushed),
so a parent process can read the real port of ``--port 0``. SIGTERM/SIGINT stop cleanly.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl

from langchain_contextharbor.testing.engines import Engine, ScriptedEngine
from langchain_contextharbor.testing.models import StandInModel
from langchain_contextharbor.testing.server import OllamaStandIn, StandInConfig

__all__ = ["build_parser", "main", "parse_model_spec"]

_INT_FIELDS = {
    f.name for f in dataclasses.fields(StandInModel) if f.type in ("int", int) and f.name != "name"
}


def parse_model_spec(spec: str) -> StandInModel:
    """``"qwen3:8b?capabilities=completion,tools,thinking&size=5200000000"`` -> model."""
    name, _, query = spec.partition("?")
    kwargs: dict[str, Any] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key in ("capabilities", "families"):
            kwargs[key] = [v for v in value.split(",") if v]
        elif key in _INT_FIELDS:
            kwargs[key] = int(float(value))
        else:
            kwargs[key] = value
    return StandInModel(name, **kwargs)


def _model_from_json(item: Any) -> StandInModel:
    if isinstance(item, str):
        return parse_model_spec(item)
    if isinstance(item, dict):
        return StandInModel(**item)
    raise ValueError(f"bad model entry: {item!r}")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``contextharbor-standin``."""
    p = argparse.ArgumentParser(
        prog="contextharbor-standin",
        description="Serve an Ollama-compatible stand-in on loopback (for tests and demos).",
    )
    p.add_argument("--config", help="JSON file with StandInConfig fields")
    p.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (0 = ephemeral; default 11434)")
    p.add_argument("--name", default=None, help="instance name used in answers (default ollama)")
    p.add_argument(
        "--version",
        dest="ollama_version",
        default=None,
        help="/api/version value (default 0.14.3); also the error framing: below 0.12.6 an "
        "error before a stream's first chunk is HTTP 200 and an error line, not a 500",
    )
    p.add_argument(
        "--origins",
        default=os.environ.get("OLLAMA_ORIGINS"),
        help="extra allowed browser origins, comma-separated (default: $OLLAMA_ORIGINS)",
    )
    p.add_argument(
        "--model",
        action="append",
        default=None,
        metavar="NAME[?k=v&...]",
        help="a model this instance has (repeatable; default llama3.2:1b)",
    )
    p.add_argument(
        "--loaded", action="append", default=None, metavar="NAME", help="preloaded model"
    )
    p.add_argument("--gpu-fraction", type=float, default=None, help="size_vram/size (0 = CPU)")
    p.add_argument("--load-delay", type=float, default=None, help="seconds to load a model")
    p.add_argument("--token-delay", type=float, default=None, help="seconds between chunks")
    p.add_argument("--num-parallel", type=int, default=None, help="concurrent generations")
    p.add_argument("--max-queue", type=int, default=None, help="waiters before 503")
    p.add_argument("--keep-alive", type=float, default=None, help="default keep_alive (s)")
    p.add_argument("--num-ctx", type=int, default=None, help="default loaded num_ctx")
    p.add_argument(
        "--engine",
        choices=("scripted", "llama"),
        default="scripted",
        help="scripted (default) or llama (SmolLM2 on llama.cpp, served as smollm2:135m)",
    )
    p.add_argument("--gguf", default=None, help="GGUF file for --engine llama")
    return p


def config_from_args(args: argparse.Namespace) -> StandInConfig:
    """Merge ``--config`` and the command-line flags into a ``StandInConfig``."""
    data: dict[str, Any] = {}
    if args.config:
        with open(args.config, encoding="utf-8") as fh:
            data = json.load(fh)
    for key in ("models", "catalogue"):
        if isinstance(data.get(key), list):
            data[key] = [_model_from_json(m) for m in data[key]]
    flags = {
        "host": args.host,
        "port": args.port,
        "name": args.name,
        "version": args.ollama_version,
        "loaded": args.loaded,
        "gpu_fraction": args.gpu_fraction,
        "load_delay": args.load_delay,
        "token_delay": args.token_delay,
        "num_parallel": args.num_parallel,
        "max_queue": args.max_queue,
        "keep_alive": args.keep_alive,
        "num_ctx": args.num_ctx,
    }
    data.update({k: v for k, v in flags.items() if v is not None})
    if args.model:
        data["models"] = [parse_model_spec(m) for m in args.model]
    if args.origins:
        data["origins"] = [o.strip() for o in args.origins.split(",") if o.strip()]
    data.setdefault("port", 11434)
    engine: Engine = ScriptedEngine()
    if args.engine == "llama":
        from langchain_contextharbor.testing.llama_engine import LlamaCppEngine

        llama = LlamaCppEngine(args.gguf)
        engine = llama
        if not args.model and "models" not in data:
            data["models"] = [llama.model_spec()]
    data["engine"] = engine
    return StandInConfig(**data)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``contextharbor-standin`` / ``python -m langchain_contextharbor.testing``."""
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
    except (OSError, ValueError, TypeError) as exc:
        print(f"contextharbor-standin: {exc}", file=sys.stderr)
        return 2
    server = OllamaStandIn(config)
    try:
        server.start()
    except OSError as exc:
        print(
            f"contextharbor-standin: cannot listen on {config.host}:{config.port}: {exc}",
            file=sys.stderr,
        )
        return 1
    done = threading.Event()

    def _stop(signum: int, frame: object) -> None:
        done.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    print(f"listening on {server.url} ({server.name})", flush=True)
    try:
        while not done.wait(0.5):
            pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
