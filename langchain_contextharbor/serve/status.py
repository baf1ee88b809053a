"""The proxy's status page (``/``), its JSON (``/api/contextharbor/status``) and ``/metrics``.

Why a page at all: the router decides a lot (which server, why, what it tried first, what it
learned), and an operator who points a chat UI at ``contextharbor serve`` has no Python
shell to call ``stats()`` in. One HTML document with a little inline JavaScript shows it,
live: no build step, no assets, nothing fetched but the JSON next to it (the page polls it
every second). The JSON is the same facts for scripts; ``/metrics`` is Prometheus text from
the project's own collector (:class:`~langchain_contextharbor.prometheus.HybridCollector`),
so a scrape reads the counters the router already keeps and costs the calls nothing.

Everything here runs when a browser or a scraper asks, never per call. Nothing a backend
keeps secret reaches the page: URLs are ``BackendConfig.safe_url`` and every text that came
from a backend (probe reasons, attempt messages, decision reasons) goes through every
configured backend's :meth:`~langchain_contextharbor.backends.BackendConfig.scrub`.

``app_state`` is whatever the server keeps its state in; it needs three attributes:

- ``router``: the :class:`~langchain_contextharbor._router.Router` the proxy routes with;
- ``decisions``: a bounded ``collections.deque`` of dicts, newest last, each with ``time``
  (epoch seconds), ``endpoint``, ``model``, ``backend``, ``reasons`` (a text or a list of
  texts) and ``attempts`` (the failed tries before it: ``response_metadata
  ["contextharbor"]["attempts"]``); optionally ``skipped`` (``{backend, reason}`` dicts),
  ``status`` (the HTTP status answered) and ``error`` (why there was no answer);
- ``configs``: the :class:`~langchain_contextharbor.backends.BackendConfig` list.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, cast

from langchain_contextharbor.backends import BackendConfig

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from langchain_contextharbor._router import Router

__all__ = ["STATUS_PATH", "StatusSource", "routes", "status_snapshot"]

STATUS_PATH = "/api/contextharbor/status"
"""Where the page's JSON lives (the page polls it every second)."""

OLLAMA_ROOT_TEXT = "Ollama is running"
"""What ``GET /`` answers a client that does not ask for HTML (Ollama's own answer)."""

DECISIONS_SHOWN = 50
"""The most recent decisions the JSON carries (the deque may keep more)."""


class StatusSource(Protocol):
    """What :func:`routes` reads from the server's state (see the module doc). Read-only:
    plain attributes and properties both satisfy it."""

    @property
    def router(self) -> Router: ...

    @property
    def decisions(self) -> Iterable[Mapping[str, Any]]: ...

    @property
    def configs(self) -> Sequence[BackendConfig]: ...


# ---------------------------------------------------------------------------- the JSON
def _scrubber(configs: Sequence[BackendConfig]) -> Callable[[Any], Any]:
    """A function that removes every backend's secrets from texts, inside lists and dicts."""

    def scrub(v: Any) -> Any:
        if isinstance(v, str):
            for c in configs:
                v = c.scrub(v)
            return v
        if isinstance(v, Mapping):
            return {str(k): scrub(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [scrub(x) for x in v]
        if v is None or isinstance(v, (bool, int, float)):
            return v
        return scrub(str(v))

    return scrub


def _health(probe: Any, now: float) -> dict[str, Any]:
    if probe is None:
        return {"state": "unknown", "reason": "not probed yet"}
    return {
        "state": "up" if probe.ok else "down",
        "version": probe.version,
        "reason": probe.reason,
        "latency_ms": round(probe.latency_ms, 1),
        "probed_s_ago": round(max(0.0, now - probe.at), 1),
        "gpu_free_bytes": probe.gpu_free,
        "gpu_total_bytes": probe.gpu_total,
        "capacity_source": probe.capacity_source,
        "models_available": None if probe.models is None else len(probe.models),
    }


def _loaded(probe: Any) -> list[dict[str, Any]]:
    if probe is None or not probe.loaded:
        return []
    return [
        {
            "name": m.name,
            "placement": m.placement,
            "size_bytes": m.size,
            "size_vram_bytes": m.size_vram,
            "context_length": m.context_length,
            "expires_at": m.expires_at,
        }
        for m in probe.loaded.values()
    ]


def status_snapshot(app_state: StatusSource) -> dict[str, Any]:
    """The facts the page shows, as JSON-ready values, secrets removed.

    Per backend: health (the last probe), circuit, in-flight calls against its slots
    (``max_parallel``), counters, loaded models with their expiry, learned speeds; then the
    newest :data:`DECISIONS_SHOWN` routing decisions, newest first."""
    router = app_state.router
    configs = list(app_state.configs) or [b.config for b in router.backends]
    scrub = _scrubber(configs)
    stats = router.stats()
    now = router.clock()
    backends = []
    for b in router.backends:
        cfg = b.config
        s = stats.get(cfg.name, {})
        probe = b.probe
        backends.append(
            {
                "name": cfg.name,
                "kind": cfg.kind,
                "url": cfg.safe_url,
                "priority": cfg.priority,
                "slots": cfg.max_parallel,
                "in_flight": s.get("in_flight", b.in_flight),
                "fleet_in_flight": s.get("fleet_in_flight"),
                "circuit": s.get("circuit", b.breaker.state),
                "consecutive_failures": s.get("consecutive_failures", 0),
                "retry_in_s": s.get("retry_in_s"),
                "health": _health(probe, now),
                "loaded": _loaded(probe),
                "requests": s.get("requests", 0),
                "successes": s.get("successes", 0),
                "failures": s.get("failures", {}),
                "fallbacks": s.get("fallbacks", 0),
                "interrupted": s.get("interrupted", 0),
                "latency_p50_ms": s.get("latency", {}).get("p50_ms"),
                "first_token_p50_ms": s.get("time_to_first_token", {}).get("p50_ms"),
                "speeds": s.get("speeds", {}),
            }
        )
    recent = list(app_state.decisions)[-DECISIONS_SHOWN:]
    decisions = [_decision(d) for d in reversed(recent)]
    out: dict[str, Any] = scrub({"time": time.time(), "backends": backends, "decisions": decisions})
    return out


def _decision(d: Mapping[str, Any]) -> dict[str, Any]:
    reasons = d.get("reasons", d.get("reason", ""))
    if isinstance(reasons, str):
        reasons = [r.strip() for r in reasons.split(";") if r.strip()]
    attempts = d.get("attempts") or []
    return {
        "time": d.get("time"),
        "endpoint": d.get("endpoint"),
        "model": d.get("model"),
        "backend": d.get("backend"),
        "reasons": list(reasons),
        "attempts": [
            {
                k: a.get(k)
                for k in ("backend", "category", "error_class", "message", "elapsed_ms")
            }
            for a in attempts
            if isinstance(a, Mapping)
        ],
        "skipped": [
            {k: sk.get(k) for k in ("backend", "reason")}
            for sk in d.get("skipped") or []
            if isinstance(sk, Mapping)
        ],
        "status": d.get("status"),
        "error": d.get("error"),
        "fallback": bool(attempts),
    }


# ---------------------------------------------------------------------------- /metrics
def _metrics_text(router: Router, label: str) -> tuple[bytes, str] | None:
    """Prometheus text for ``router``, or None when prometheus-client is not installed."""
    try:
        import prometheus_client
    except ImportError:
        return None
    from langchain_contextharbor.prometheus import HybridCollector

    class RouterCollector(HybridCollector):
        """The chat model's collector over the router itself: it only reads ``stats()``,
        which the router has (the chat model's ``stats()`` is the router's)."""

        def __init__(self) -> None:
            self._models = [(label, cast(Any, router))]
            self._ns = "contextharbor"

    registry = prometheus_client.CollectorRegistry()
    registry.register(RouterCollector())
    return prometheus_client.generate_latest(registry), prometheus_client.CONTENT_TYPE_LATEST


# ---------------------------------------------------------------------------- routes
_HEADERS = {
    "Cache-Control": "no-store",
    # The page runs only its own inline script and talks only to this server.
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def routes(app_state: StatusSource, *, metrics_label: str = "serve") -> list[Route]:
    """The three routes: ``/`` (the page; to a client that does not accept ``text/html``,
    Ollama's own ``Ollama is running``), :data:`STATUS_PATH` (its JSON) and ``/metrics``.

    ``metrics_label`` is the ``router`` label of every metric (the Prometheus collector
    names each router it reads)."""
    from starlette.responses import HTMLResponse, PlainTextResponse
    from starlette.responses import Response as _Response
    from starlette.routing import Route

    async def page(request: Request) -> Response:
        # Ollama's own ``GET /`` answers "Ollama is running", and clients check it to see
        # whether a server is up; a browser asks for HTML. Both get theirs.
        if "text/html" not in request.headers.get("accept", ""):
            return PlainTextResponse(OLLAMA_ROOT_TEXT)
        return HTMLResponse(PAGE, headers=_HEADERS)

    async def status(request: Request) -> Response:
        body = json.dumps(status_snapshot(app_state), separators=(",", ":"))
        return _Response(
            body,
            media_type="application/json",
            headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
        )

    async def metrics(request: Request) -> Response:
        out = _metrics_text(app_state.router, metrics_label)
        if out is None:
            return PlainTextResponse(
                "metrics need prometheus-client: "
                "pip install 'langchain-contextharbor[prometheus]'\n",
                status_code=503,
            )
        body, ctype = out
        return _Response(body, headers={"Content-Type": ctype, "Cache-Control": "no-store"})

    return [
        Route("/", page, methods=["GET"], name="status_page"),
        Route(STATUS_PATH, status, methods=["GET"], name="status_json"),
        Route("/metrics", metrics, methods=["GET"], name="metrics"),
    ]


# ---------------------------------------------------------------------------- the page
# Every value reaches the DOM through textContent (never innerHTML): a model name or an
# error text from a backend cannot inject markup.
PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>contextharbor serve</title>
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #1d232a; background: #fafbfc; }
  h1 { font-size: 1.4em; margin: 0 0 .2em; }
  h2 { font-size: 1.05em; margin: 1.4em 0 .4em; }
  #meta { color: #5a6570; }
  #meta.stale { color: #b3261e; font-weight: 600; }
  table { border-collapse: collapse; width: 100%; background: #fff; }
  th, td { text-align: left; padding: .3em .6em; border-bottom: 1px solid #e3e7eb;
           vertical-align: top; }
  th { background: #f0f3f6; font-weight: 600; }
  td.num { text-align: right; font-variant-numeric: tabular-nums; }
  .pill { display: inline-block; padding: 0 .5em; border-radius: .8em; font-size: .9em; }
  .up, .closed { background: #dff3e4; color: #14632c; }
  .down, .open { background: #fde2e1; color: #9b1c16; }
  .unknown, .half_open { background: #fff4d6; color: #7a5a00; }
  .muted { color: #7a848d; }
  ul.attempts { margin: 0; padding-left: 1.1em; }
  .empty td { color: #7a848d; font-style: italic; }
</style>
</head>
<body>
<h1>contextharbor serve</h1>
<div id="meta">loading&hellip;</div>

<h2>Backends</h2>
<table>
  <thead><tr><th>backend</th><th>kind</th><th>url</th><th>health</th><th>circuit</th>
  <th>in flight / slots</th><th>requests</th><th>ok</th><th>failed</th><th>fell back</th>
  <th>p50 latency</th><th>p50 first token</th></tr></thead>
  <tbody id="backends"></tbody>
</table>

<h2>Loaded models</h2>
<table>
  <thead><tr><th>backend</th><th>model</th><th>placement</th><th>VRAM</th><th>context</th>
  <th>expires</th></tr></thead>
  <tbody id="loaded"></tbody>
</table>

<h2>Learned speeds</h2>
<table>
  <thead><tr><th>backend</th><th>model</th><th>tokens/s</th><th>first token</th>
  <th>answer tokens</th><th>load</th><th>samples</th></tr></thead>
  <tbody id="speeds"></tbody>
</table>

<h2>Last decisions</h2>
<table>
  <thead><tr><th>time</th><th>endpoint</th><th>model</th><th>backend</th><th>status</th>
  <th>reasons</th><th>attempts before it</th></tr></thead>
  <tbody id="decisions"></tbody>
</table>

<script>
"use strict";
const STATUS = "__STATUS_PATH__";
function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}
function row(cells, cls) {
  const tr = el("tr", null, cls);
  for (const c of cells) {
    if (c instanceof Node) { const td = el("td"); td.appendChild(c); tr.appendChild(td); }
    else if (typeof c === "number") tr.appendChild(el("td", c, "num"));
    else tr.appendChild(el("td", c === null || c === undefined ? "\\u2013" : c));
  }
  return tr;
}
function fill(id, rows, cols, emptyText) {
  const body = document.getElementById(id);
  body.replaceChildren(...rows);
  if (!rows.length) {
    const tr = el("tr", null, "empty"), td = el("td", emptyText);
    td.colSpan = cols; tr.appendChild(td); body.appendChild(tr);
  }
}
function ms(v) {
  if (v === null || v === undefined) return null;
  return v < 1000 ? v.toFixed(1) + " ms" : (v / 1000).toFixed(2) + " s";
}
function gb(v) { return v ? (v / 2 ** 30).toFixed(2) + " GiB" : null; }
function expiry(s) {
  if (!s) return null;
  const t = Date.parse(s);
  if (isNaN(t)) return s;
  if (new Date(t).getUTCFullYear() < 2000) return "never";
  const left = Math.round((t - Date.now()) / 1000);
  const at = new Date(t).toLocaleTimeString();
  if (left <= 0) return "expired (" + at + ")";
  const m = Math.floor(left / 60), sec = left % 60;
  return "in " + (m ? m + "m " : "") + sec + "s (" + at + ")";
}
function failed(f) { let n = 0; for (const k in f) n += f[k]; return n; }
function render(s) {
  const backends = [], loaded = [], speeds = [];
  for (const b of s.backends) {
    const h = b.health;
    const health = el("span", h.state, "pill " + h.state);
    health.title = h.reason || ("version " + (h.version || "?") + ", probe " + h.latency_ms
      + " ms, " + h.probed_s_ago + " s ago");
    const circuit = el("span", b.circuit.replace("_", "-"), "pill " + b.circuit);
    if (b.retry_in_s !== null) circuit.title = "retry in " + b.retry_in_s + " s";
    const fleet = b.fleet_in_flight;
    const flight = b.in_flight + " / " + b.slots
      + (fleet !== null && fleet !== undefined ? " (fleet " + fleet + ")" : "");
    const tr = row([b.name, b.kind, b.url, health, circuit, flight, b.requests, b.successes,
      failed(b.failures), b.fallbacks, ms(b.latency_p50_ms), ms(b.first_token_p50_ms)], "backend");
    tr.dataset.name = b.name; tr.dataset.health = h.state; tr.dataset.circuit = b.circuit;
    tr.dataset.failed = String(failed(b.failures));
    backends.push(tr);
    for (const m of b.loaded) {
      const r = row([b.name, m.name, m.placement, gb(m.size_vram_bytes), m.context_length,
        expiry(m.expires_at)], "loaded");
      r.dataset.backend = b.name; r.dataset.model = m.name; loaded.push(r);
    }
    for (const [model, sp] of Object.entries(b.speeds)) {
      const r = row([b.name, model, sp.tokens_per_s, sp.first_token_s + " s", sp.answer_tokens,
        sp.load_s === null ? null : sp.load_s + " s", sp.samples], "speed");
      r.dataset.backend = b.name; speeds.push(r);
    }
  }
  fill("backends", backends, 12, "no backends configured");
  fill("loaded", loaded, 6, "no model loaded anywhere (as of the last probes)");
  fill("speeds", speeds, 7, "nothing measured yet");
  const decisions = [];
  for (const d of s.decisions) {
    const ul = el("ul", null, "attempts");
    for (const a of d.attempts) {
      ul.appendChild(el("li", a.backend + ": " + a.error_class + " [" + a.category + "] "
        + a.message));
    }
    const when = typeof d.time === "number" ? new Date(d.time * 1000).toLocaleTimeString() : d.time;
    for (const k of d.skipped) ul.appendChild(el("li", k.backend + ": skipped: " + k.reason));
    const tried = ul.childNodes.length ? ul : el("span", "none", "muted");
    const why = d.reasons.join("; ") + (d.error ? (d.reasons.length ? "; " : "") + d.error : "");
    const r = row([when, d.endpoint, d.model, d.backend, d.status, why, tried], "decision");
    r.dataset.backend = d.backend || ""; r.dataset.fallback = String(d.fallback);
    decisions.push(r);
  }
  fill("decisions", decisions, 7, "no calls yet");
  const meta = document.getElementById("meta");
  meta.className = "";
  meta.textContent = "updated " + new Date(s.time * 1000).toLocaleTimeString() + " \\u00b7 "
    + s.backends.length + " backends \\u00b7 refreshes every second";
  document.body.dataset.updated = String(s.time);
}
async function tick() {
  try {
    const r = await fetch(STATUS, {cache: "no-store"});
    if (!r.ok) throw new Error("HTTP " + r.status);
    render(await r.json());
  } catch (e) {
    const meta = document.getElementById("meta");
    meta.className = "stale";
    meta.textContent = "cannot reach the proxy (" + e.message + "); showing the last known state";
  } finally {
    setTimeout(tick, 1000);
  }
}
tick();
</script>
</body>
</html>
""".replace("__STATUS_PATH__", STATUS_PATH)
