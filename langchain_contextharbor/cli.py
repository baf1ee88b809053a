"""``contextharbor``: look at the Ollama servers the router uses, from a shell.

Why a CLI: after setting up a GPU and a CPU server, the first questions are "are both up,
is the model loaded on the GPU or spilled to the CPU, which models exist on only one of
them, and where would my model go" - and they must be answerable by a script (``--json``,
exit codes) without writing Python. The commands are thin printers over the public helpers
of :mod:`langchain_contextharbor.health`, so they report what the chat model sees.

The original ``hybrid_router.py --check`` / ``--models`` flags still work and still print
JSON, so scripts written for it keep working.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import textwrap
from collections.abc import Sequence
from typing import Any, TextIO

from langchain_contextharbor import (
    BackendHealth,
    ConfigurationError,
    __version__,
    check_backends,
    health_report,
    list_models,
    models_on_one_backend,
    preview_route,
)
from langchain_contextharbor.routing import RoutePlan
from langchain_contextharbor.serve._cli import add_serve_parser, run_serve

__all__ = [
    "EXIT_ALL_DOWN",
    "EXIT_CONFIG",
    "EXIT_DEGRADED",
    "EXIT_INTERRUPTED",
    "EXIT_NO_ROUTE",
    "EXIT_OK",
    "EXIT_USAGE",
    "build_parser",
    "main",
]

EXIT_OK = 0
EXIT_CONFIG = 1
EXIT_USAGE = 2  # argparse's own code for a usage error
EXIT_DEGRADED = 3
EXIT_ALL_DOWN = 4
EXIT_NO_ROUTE = 5
EXIT_INTERRUPTED = 130

_EPILOG = f"""\
configuration:
  OLLAMA_GPU_URL  GPU server (default http://127.0.0.1:11434); empty disables it
  OLLAMA_CPU_URL  CPU server (default http://127.0.0.1:11435); empty disables it
  --gpu-url / --cpu-url override them. Credentials in URLs are never printed.

exit codes:
  {EXIT_OK}    every configured backend is healthy (route: a backend can serve MODEL)
  {EXIT_CONFIG}    configuration error (bad URL, no backend configured)
  {EXIT_USAGE}    usage error (bad command line)
  {EXIT_DEGRADED}    some backends are down (the others answered)
  {EXIT_ALL_DOWN}    every configured backend is down
  {EXIT_NO_ROUTE}    route: no backend can serve the model
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C)
"""


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0 seconds, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def _para(text: str) -> str:
    """Wrap a description (the raw formatter keeps the epilog's layout but wraps nothing)."""
    return textwrap.fill(text, width=79)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed so ``--help`` can be tested and documented)."""
    # Shared options, accepted before or after the subcommand. SUPPRESS as default keeps a
    # subparser from overwriting a value given before the subcommand with its own default.
    common = argparse.ArgumentParser(add_help=False)
    opts = common.add_argument_group("common options")
    opts.add_argument(
        "--gpu-url",
        metavar="URL",
        default=argparse.SUPPRESS,
        help="GPU server URL (overrides OLLAMA_GPU_URL; '' disables it)",
    )
    opts.add_argument(
        "--cpu-url",
        metavar="URL",
        default=argparse.SUPPRESS,
        help="CPU server URL (overrides OLLAMA_CPU_URL; '' disables it)",
    )
    opts.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_seconds,
        default=argparse.SUPPRESS,
        help="probe timeout per server (default 1.5); nothing waits longer",
    )
    opts.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print JSON instead of a table",
    )

    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="contextharbor",
        parents=[common],
        formatter_class=fmt,
        epilog=_EPILOG,
        description=_para(
            "Check the Ollama servers langchain-contextharbor routes across, list "
            "their models, and show where a model would be routed."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    legacy = parser.add_mutually_exclusive_group()
    legacy.add_argument(
        "--check",
        dest="legacy",
        action="store_const",
        const="check",
        help="the original script's flag: same as 'check --json'",
    )
    legacy.add_argument(
        "--models",
        dest="legacy",
        action="store_const",
        const="models",
        help="the original script's flag: same as 'models --json'",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser(
        "check",
        parents=[common],
        formatter_class=fmt,
        epilog=_EPILOG,
        help="health of each server: status, version, latency, memory, loaded models",
        description=_para(
            "Probe each configured server (/api/version, /api/tags, /api/ps) and "
            "report its status, Ollama version, probe latency, memory and the loaded "
            "models with their GPU/CPU split."
        ),
    )
    p_models = sub.add_parser(
        "models",
        parents=[common],
        formatter_class=fmt,
        epilog=_EPILOG,
        help="models per server; marks models only one server has, and different builds",
        description=_para(
            "List the models of each server with the digest (build) of each. A model "
            "that only one answering server has is marked: if that server fails, there "
            "is no fallback. A model whose servers hold different builds is marked too: "
            "answers may change after a failover, and an embedding index made with one "
            "build does not match vectors of the other."
        ),
    )
    p_models.add_argument(
        "--detail",
        action="store_true",
        help="with --json: per-model detail instead of the original {backend: [models]} shape",
    )
    p_route = sub.add_parser(
        "route",
        parents=[common],
        formatter_class=fmt,
        epilog=_EPILOG,
        help="where a call for MODEL would go now, with every reason",
        description=_para(
            "Probe the servers, then show the ordered candidates for a call to "
            "MODEL with the reason for each position and for each skipped server."
        ),
    )
    p_route.add_argument("model", metavar="MODEL", help="model tag, e.g. llama3.1:8b")
    p_route.add_argument(
        "--num-ctx",
        type=_positive_int,
        metavar="N",
        help="context size of the call (default 4096, Ollama's default)",
    )
    p_route.add_argument(
        "--table",
        action="store_true",
        help="print the plan as a table: one row per backend, in the order they are tried",
    )
    add_serve_parser(sub, parents=[common], epilog=_EPILOG, formatter=fmt)
    return parser


# ---------------------------------------------------------------------------- printing
def _gb(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f} GiB"


WIDTH = 80
"""Columns every printed line fits in: a terminal's default, and what a pasted report or a
log viewer shows without wrapping rows into each other."""


def _column_widths(rows: Sequence[Sequence[str]], limit: int) -> list[int]:
    """Each column's width so that a row fits ``limit``: the widest columns give way first,
    down to their longest word (at most 24 characters), so text wraps between words and a
    URL stays whole where it can."""
    n = len(rows[0])
    widths = [max(len(r[i]) for r in rows) for i in range(n)]
    floors = [
        min(
            widths[i],
            max(len(rows[0][i]), min(24, max(len(w) for r in rows for w in r[i].split() or [""]))),
        )
        for i in range(n)
    ]
    excess = sum(widths) + 2 * (n - 1) - limit
    while excess > 0:
        i = max(range(n), key=lambda j: (widths[j] > floors[j], widths[j]))
        if widths[i] <= floors[i]:
            break
        widths[i] -= 1
        excess -= 1
    return widths


def _table(rows: Sequence[Sequence[str]], limit: int = WIDTH) -> list[list[str]]:
    """The rows as aligned text, each row a list of lines: a cell too wide for its column
    wraps onto the row's next lines within that column (a row never spills into the next
    one), so every line fits ``limit`` columns."""
    widths = _column_widths(rows, limit)
    out: list[list[str]] = []
    for r in rows:
        cells = [
            textwrap.wrap(c, max(w, 1), break_on_hyphens=False) or [""]
            for c, w in zip(r, widths, strict=True)
        ]
        height = max(len(c) for c in cells)
        out.append(
            [
                "  ".join(
                    (c[k] if k < len(c) else "").ljust(w)
                    for c, w in zip(cells, widths, strict=True)
                ).rstrip()
                for k in range(height)
            ]
        )
    return out


def _wrap(line: str, limit: int = WIDTH) -> str:
    """One line of free text wrapped to ``limit``; its continuations indented under it (past
    a leading ``- `` bullet), so wrapped text still reads as one item."""
    body = line.lstrip(" ")
    indent = " " * (len(line) - len(body))
    hang = indent + ("  " if body.startswith("- ") else "    ")
    return textwrap.fill(
        body,
        limit,
        initial_indent=indent,
        subsequent_indent=hang,
        break_on_hyphens=False,
        break_long_words=False,
    )


def _say(line: str, out: TextIO) -> None:
    print(_wrap(line), file=out)


def _memory(h: BackendHealth) -> str:
    if h.max_memory_gb is None and h.free_memory_gb is None:
        return "unknown"
    parts = []
    if h.max_memory_gb is not None:
        parts.append(f"{_gb(h.max_memory_gb)} total")
    if h.free_memory_gb is not None:
        held = h.loaded_memory_gb or 0.0
        # The same split `route` names: free, plus what loaded models hold (reclaimable).
        extra = f" + {_gb(held)} in loaded models" if held >= 0.05 else ""
        parts.append(f"{_gb(h.free_memory_gb)} free{extra}")
    return ", ".join(parts)


def _memory_cell(h: BackendHealth) -> str:
    """The table's short memory figure; the whole split (total, free, held by loaded
    models) is the row's ``memory:`` line, which has the room."""
    if h.free_memory_gb is not None:
        return f"{_gb(h.free_memory_gb)} free"
    if h.max_memory_gb is not None:
        return f"{_gb(h.max_memory_gb)} total"
    return "unknown"


def _print_check(healths: Sequence[BackendHealth], out: TextIO) -> None:
    rows = [("BACKEND", "KIND", "STATUS", "VERSION", "LATENCY", "MEMORY", "URL")]
    rows += [
        (
            h.name,
            h.kind,
            h.status,
            h.version or "-",
            f"{h.latency_ms:.0f} ms",
            _memory_cell(h),
            h.url,
        )
        for h in healths
    ]
    header, *blocks = _table(rows)
    print("\n".join(header), file=out)
    for h, block in zip(healths, blocks, strict=True):
        print("\n".join(block), file=out)
        if not h.healthy:
            _say(f"    error: {h.error}", out)
            continue
        if _memory(h) != _memory_cell(h):
            _say(f"    memory: {_memory(h)}", out)
        if h.memory_source != "unknown":
            _say(f"    memory source: {h.memory_source}", out)
        for warning in h.warnings:
            _say(f"    WARNING: {warning}", out)
        if not h.loaded:
            _say(f"    loaded: none ({len(h.models or ())} models available)", out)
        for m in h.loaded:
            ctx = f", ctx {m.context_length}" if m.context_length else ""
            _say(f"    loaded: {m.name}  {m.placement}  ({_gb(m.size / 1024**3)}{ctx})", out)
    up = sum(h.healthy for h in healths)
    warned = sum(len(h.warnings) for h in healths)
    tail = f", {warned} warning(s) above" if warned else ""
    _say(f"{up}/{len(healths)} backends healthy{tail}", out)


def _print_route_table(plan: RoutePlan, out: TextIO) -> None:
    """The plan as rows: order tried, backend, kind, URL, and the reasons in one cell."""
    _say(f"route for {plan.model!r}: {plan.summary}", out)
    rows: list[tuple[str, ...]] = [("#", "BACKEND", "KIND", "URL", "WHY")]
    rows += [
        (str(i), c.backend, c.kind, c.url, "; ".join(c.reasons))
        for i, c in enumerate(plan.candidates, 1)
    ]
    rows += [("-", s.backend, "", s.url, f"skipped: {s.reason}") for s in plan.skipped]
    for block in _table(rows):
        print("\n".join(block), file=out)
    for note in plan.notes:
        _say(f"note: {note}", out)


def _digest_cells(healths: Sequence[BackendHealth], model: str) -> dict[str, str]:
    """Backend -> digest of ``model`` on every backend that lists it."""
    out: dict[str, str] = {}
    for h in healths:
        d = h.digest_of(model)
        if d is not None:
            out[h.name] = d
    return out


def _print_models(healths: Sequence[BackendHealth], out: TextIO) -> None:
    only = models_on_one_backend(healths)
    names = sorted({m for h in healths for m in (h.models or ())})
    rows: list[tuple[str, ...]] = [("MODEL", *(h.name for h in healths), "DIGEST", "")]
    differ = 0
    for m in names:
        cells = [
            "yes" if m in (h.models or ()) else ("?" if h.models is None else "-") for h in healths
        ]
        digests = _digest_cells(healths, m)
        builds = sorted(set(digests.values()))
        notes = []
        if len(builds) > 1:
            differ += 1
            shown = "DIFFERS"
            where = ", ".join(f"{b} {d[:12]}" for b, d in digests.items())
            notes.append(f"! different builds: {where}")
        else:
            shown = builds[0][:12] if builds else "?"
        if m in only:
            notes.append(f"* only on {only[m]}: no fallback")
        rows.append((m, *cells, shown, "; ".join(notes)))
    for block in _table(rows):
        print("\n".join(block), file=out)
    if not names:
        print("(no models listed)", file=out)
    for h in healths:
        if h.models is None:
            _say(f"{h.name}: down, its models are unknown ({h.error})", out)
    if only:
        _say(
            f"{len(only)} model(s) on one backend only (marked *): a failure there "
            "cannot fall back",
            out,
        )
    if differ:
        _say(
            f"{differ} model(s) with different builds on different backends (marked !): "
            "answers may differ after a failover, and embeddings of one build do not match "
            "an index made with the other; pull the same build on every server",
            out,
        )


def _models_detail(healths: Sequence[BackendHealth]) -> dict[str, Any]:
    only = models_on_one_backend(healths)
    names = sorted({m for h in healths for m in (h.models or ())})
    loaded = {(h.name, m.name): m.placement for h in healths for m in h.loaded}
    detail: dict[str, Any] = {}
    for m in names:
        digests = _digest_cells(healths, m)
        detail[m] = {
            "backends": [h.name for h in healths if m in (h.models or ())],
            "only_on": only.get(m),
            "loaded": {h.name: loaded[(h.name, m)] for h in healths if (h.name, m) in loaded},
            "digests": digests,
            "same_digest": None if len(digests) < 2 else len(set(digests.values())) == 1,
        }
    return {
        "backends": {
            h.name: {
                "status": h.status,
                "url": h.url,
                "is_gpu": h.is_gpu,
                "error": h.error,
                "models": None if h.models is None else list(h.models),
            }
            for h in healths
        },
        "models": detail,
    }


def _health_exit(healths: Sequence[BackendHealth]) -> int:
    up = sum(h.healthy for h in healths)
    if up == len(healths):
        return EXIT_OK
    return EXIT_ALL_DOWN if up == 0 else EXIT_DEGRADED


def _dump(obj: Any, out: TextIO) -> None:
    print(json.dumps(obj, indent=2), file=out)


# ---------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (the console script passes it to ``sys.exit``).

    A reader that stops early (``contextharbor --json check | head -3``) closes the pipe
    under the printing: that ends the command quietly, with the exit code of what was
    found (the answer did not change because fewer lines were read), not a
    ``BrokenPipeError`` traceback and exit 1."""
    found = [EXIT_OK]
    try:
        return _main(argv, found)
    except BrokenPipeError:
        _detach_stdout()
        return found[0]


def _detach_stdout() -> None:
    """Point stdout at /dev/null: what is still buffered would raise again when the
    interpreter flushes it at exit (the reader is gone either way)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (AttributeError, OSError, ValueError):  # not a real file (a test's capture)
        pass


def _main(argv: Sequence[str] | None, found: list[int]) -> int:
    """:func:`main`'s work; ``found[0]`` holds the exit code as soon as it is known, before
    the printing that a closed pipe can cut short."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors: keep argparse's codes
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    command = args.command
    as_json = bool(getattr(args, "json", False))
    if args.legacy is not None:
        if command is not None:
            parser.print_usage(sys.stderr)
            print(
                f"contextharbor: error: --{args.legacy} cannot be combined with the "
                f"'{command}' command",
                file=sys.stderr,
            )
            return EXIT_USAGE
        command, as_json = args.legacy, True
    if command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    if command == "serve":
        return run_serve(args)
    config = {
        "gpu_url": getattr(args, "gpu_url", None),
        "cpu_url": getattr(args, "cpu_url", None),
        "timeout": getattr(args, "timeout", None),
    }
    out = sys.stdout
    try:
        if command == "route":
            plan = preview_route(args.model, num_ctx=args.num_ctx, **config)
            found[0] = EXIT_OK if plan.candidates else EXIT_NO_ROUTE
            if as_json:
                _dump(plan.as_dict(), out)
            elif getattr(args, "table", False):
                _print_route_table(plan, out)
            else:
                for line in plan.explain().splitlines():
                    _say(line, out)
        else:
            healths = check_backends(**config)
            found[0] = _health_exit(healths)
            if command == "check":
                if as_json:
                    _dump(health_report(healths), out)
                else:
                    _print_check(healths, out)
            elif as_json:
                detail = bool(getattr(args, "detail", False))
                _dump(_models_detail(healths) if detail else list_models(healths=healths), out)
            else:
                _print_models(healths, out)
        out.flush()  # a closed pipe shows here, inside main, not at interpreter exit
        return found[0]
    except ConfigurationError as exc:
        message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        print(f"contextharbor: error: {message}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        print("contextharbor: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover - `python -m langchain_contextharbor.cli`
    sys.exit(main())
