"""Serve an ASGI app (starlette) with uvicorn on a loopback port, in a thread.

Why: the status page and the web example are tested the way a browser meets them, over
real HTTP; a port the OS picks (bound here, handed to uvicorn as a socket) means no port
collisions between tests running side by side. Needs the ``serve`` extra (uvicorn).
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

__all__ = ["ServedApp"]


class ServedApp:
    """``app`` served on ``127.0.0.1:<free port>`` until :meth:`close` (or ``with``)."""

    def __init__(self, app: Any, *, start_timeout: float = 20.0) -> None:
        import uvicorn

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self._sock = sock
        self.port: int = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        # uvicorn installs no signal handlers off the main thread; lifespan runs the app's
        # startup and shutdown hooks as a real server would.
        config = uvicorn.Config(
            app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [sock]}, name="asgi-app", daemon=True
        )
        self.thread.start()
        deadline = time.monotonic() + start_timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.close()
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)

    def close(self) -> None:
        """Stop serving: idle connections close at once, a response still streaming gets
        two seconds to end before it is cancelled."""
        self.server.should_exit = True
        self.thread.join(10)
        self._sock.close()

    def __enter__(self) -> ServedApp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
