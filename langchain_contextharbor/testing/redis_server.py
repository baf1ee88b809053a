"""A real ``redis-server`` on loopback for fleet-mode tests and benchmarks.

Why a real one: fleet mode is about what Redis does (Lua scripts, expiring leases, a server
that dies and comes back); a fake would test the fake. The binary comes from the system
package (``apt-get install redis-server``; ``scripts/ci_system_deps.sh`` installs it in CI).
Each server runs without persistence (``--save '' --appendonly no``) in its own temporary
directory, on a free port, and is killed on ``stop()``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

__all__ = ["RedisServer", "redis_server_binary"]


def redis_server_binary() -> str | None:
    """Path of ``redis-server`` (``$CONTEXTHARBOR_REDIS_SERVER``, ``PATH``, /usr/bin, /usr/sbin)."""
    env = os.environ.get("CONTEXTHARBOR_REDIS_SERVER")
    if env:
        return env if os.access(env, os.X_OK) else None
    found = shutil.which("redis-server")
    if found:
        return found
    for p in ("/usr/bin/redis-server", "/usr/sbin/redis-server", "/usr/local/bin/redis-server"):
        if os.access(p, os.X_OK):
            return p
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One ``redis-server`` process on ``127.0.0.1``; ``url`` is what fleet mode takes."""

    def __init__(self, *, password: str | None = None, binary: str | None = None) -> None:
        self.binary = binary or redis_server_binary()
        if self.binary is None:
            raise FileNotFoundError("redis-server not found (apt-get install redis-server)")
        self.password = password
        self.port = _free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="contextharbor-redis-")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, ready_within: float = 10.0) -> RedisServer:
        """Start (or start again, on the same port) and return once it accepts connections."""
        if self.running:
            return self
        args = [
            str(self.binary),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self._dir.name,
            "--daemonize",
            "no",
        ]
        if self.password:
            args += ["--requirepass", self.password]
        self._proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL
        )
        deadline = time.monotonic() + ready_within
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self._proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.01)  # polling for the server to come up, not a timeout
        self.stop()
        raise RuntimeError(
            f"redis-server did not listen on port {self.port} within {ready_within}s"
        )

    def kill(self) -> None:
        """SIGKILL: the server vanishes mid-run, as in a crash (its data is gone)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGKILL)
            self._proc.wait(5)
        self._proc = None

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        self._proc = None

    def close(self) -> None:
        self.stop()
        self._dir.cleanup()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<RedisServer 127.0.0.1:{self.port} {'running' if self.running else 'stopped'}>"
