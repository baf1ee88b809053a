"""The design's web integration: a chat page whose answers stream in over SSE.

python examples/web_app.py            # then open http://127.0.0.1:8000/
python examples/web_app.py --port 8080

A starlette app (``pip install 'langchain-contextharbor[serve]'``; uvicorn runs it). The
page sends each message to ``GET /chat/stream``, which streams ``HybridChatOllama`` tokens
back as server-sent events: ``token`` events with text, then one ``done`` event naming the
server that answered (or one ``failed`` event saying why there is no full answer). Each
browser tab is a session with its own history, kept here in memory.

Stop the GPU server in the middle of a conversation (``systemctl --user stop
ollama-gpu@11434``, or with the embedded stand-ins, ``POST /demo/stop-gpu``): the next
answer comes from the CPU server, and the page says so. A server that fails after tokens
were shown never has its text repeated: the page keeps what arrived and says the answer
was cut (``StreamInterruptedError``).

It uses real Ollama when one answers at ``OLLAMA_GPU_URL`` / ``OLLAMA_CPU_URL`` (see
examples/_servers.py), else two embedded stand-ins.
"""

from __future__ import annotations

import argparse
import json
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from langchain_contextharbor import ContextHarborError, HybridChatOllama, StreamInterruptedError

MAX_SESSIONS = 1000
MAX_TURNS = 50
"""Messages kept per session (the oldest are dropped), so memory stays bounded."""


def sse(event: str, data: dict[str, Any]) -> str:
    """One server-sent event (``data`` as one JSON line)."""
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


def build_app(llm: HybridChatOllama, *, stop_gpu: Callable[[], None] | None = None) -> Starlette:
    """The chat app over ``llm``. ``stop_gpu``: what ``POST /demo/stop-gpu`` does (only
    with the embedded stand-ins; absent otherwise)."""
    sessions: OrderedDict[str, list[tuple[str, str]]] = OrderedDict()

    def history(session: str) -> list[tuple[str, str]]:
        turns = sessions.pop(session, None) or []
        sessions[session] = turns  # the most recently used last
        while len(sessions) > MAX_SESSIONS:
            sessions.popitem(last=False)
        return turns

    async def page(request: Request) -> Response:
        return HTMLResponse(PAGE)

    async def chat_stream(request: Request) -> Response:
        message = request.query_params.get("message", "").strip()
        session = request.query_params.get("session", "")[:64]
        if not message or not session:
            return JSONResponse({"error": "message and session are required"}, status_code=400)
        turns = history(session)
        turns.append(("human", message))

        async def events() -> AsyncIterator[str]:
            text: list[str] = []
            backend = None
            fallback = False
            try:
                async for chunk in llm.astream(list(turns)):
                    meta = chunk.response_metadata
                    if backend is None and meta.get("backend"):  # on the first chunk
                        backend = meta["backend"]
                        fallback = bool(meta.get("contextharbor", {}).get("fallback"))
                    if isinstance(chunk.content, str) and chunk.content:
                        text.append(chunk.content)
                        yield sse("token", {"text": chunk.content})
            except StreamInterruptedError as exc:
                # Tokens from the failed server were shown: they are kept, never re-sent.
                yield sse("failed", {"message": "the answer was cut", "backend": exc.backend})
            except ContextHarborError as exc:  # no server could answer: a typed error
                yield sse("failed", {"message": str(exc).splitlines()[0]})
            else:
                yield sse("done", {"backend": backend, "fallback": fallback})
            finally:
                if text:
                    turns.append(("ai", "".join(text)))
                del turns[:-MAX_TURNS]

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def demo_stop_gpu(request: Request) -> Response:
        assert stop_gpu is not None
        stop_gpu()
        return JSONResponse({"stopped": "gpu"})

    routes = [Route("/", page), Route("/chat/stream", chat_stream)]
    if stop_gpu is not None:
        routes.append(Route("/demo/stop-gpu", demo_stop_gpu, methods=["POST"]))
    return Starlette(routes=routes)


# Text reaches the page through textContent only: an answer cannot inject markup.
PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>contextharbor chat</title>
<style>
  body { font: 15px/1.5 system-ui, sans-serif; max-width: 48em; margin: 2em auto; }
  #log div { margin: .4em 0; padding: .4em .7em; border-radius: .5em; }
  .human { background: #e8f0fe; }
  .ai { background: #f1f3f4; white-space: pre-wrap; }
  .note { color: #5f6368; font-size: .85em; display: block; }
  .error { color: #b3261e; }
  form { display: flex; gap: .5em; }
  #message { flex: 1; padding: .4em; }
</style>
</head>
<body>
<h1>contextharbor chat</h1>
<div id="log"></div>
<form id="form"><input id="message" autocomplete="off" placeholder="Say something">
<button id="send">Send</button></form>
<script>
"use strict";
const session = crypto.randomUUID ? crypto.randomUUID() : String(Math.random()).slice(2);
const log = document.getElementById("log");
let busy = false;
function add(cls, text) {
  const d = document.createElement("div");
  d.className = cls; d.textContent = text; log.appendChild(d); return d;
}
function note(div, text, cls) {
  const n = document.createElement("span");
  n.className = "note" + (cls ? " " + cls : ""); n.textContent = text; div.appendChild(n);
}
document.getElementById("form").addEventListener("submit", (e) => {
  e.preventDefault();
  const input = document.getElementById("message");
  const message = input.value.trim();
  if (!message || busy) return;
  busy = true; input.value = "";
  add("human", message);
  const answer = add("ai", "");
  const body = document.createTextNode("");
  answer.appendChild(body);
  answer.dataset.state = "streaming";
  const url = "chat/stream?session=" + encodeURIComponent(session)
    + "&message=" + encodeURIComponent(message);
  const source = new EventSource(url);
  const finish = (state) => { source.close(); answer.dataset.state = state; busy = false; };
  source.addEventListener("token", (ev) => { body.data += JSON.parse(ev.data).text; });
  source.addEventListener("done", (ev) => {
    const d = JSON.parse(ev.data);
    answer.dataset.backend = d.backend;
    note(answer, "served by " + d.backend + (d.fallback ? " (after a failover)" : ""));
    finish("done");
  });
  source.addEventListener("failed", (ev) => {
    note(answer, JSON.parse(ev.data).message, "error");
    finish("failed");
  });
  source.onerror = () => {  // the connection broke (no done/failed event came)
    if (answer.dataset.state !== "streaming") return;
    note(answer, "connection lost", "error");
    finish("lost");
  };
});
</script>
</body>
</html>
"""


def main() -> None:
    import uvicorn
    from _servers import servers

    ap = argparse.ArgumentParser(description="The chat page over HybridChatOllama, SSE.")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    args = ap.parse_args()
    with servers() as s:
        llm = HybridChatOllama(model=s.model, backends=s.backends)
        gpu = s.standins.get("gpu")
        app = build_app(llm, stop_gpu=gpu.stop if gpu is not None else None)
        print(f"Chat page on http://{args.host}:{args.port}/ (Ctrl-C stops it)")
        try:
            uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
        finally:
            llm.close()


if __name__ == "__main__":
    main()
