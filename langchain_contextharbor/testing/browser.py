"""A real headless browser for tests: Debian's ``chromium`` driven over the DevTools protocol.

Why not ``chromium --dump-dom`` alone: a dump is one page load, so it cannot show that a
page *updates* while it stays open (the status page polls its JSON every second; the web
example streams tokens over SSE). A page kept open and read with ``Runtime.evaluate`` can.
Why not Playwright or Selenium: both download their own browser builds, which these
machines cannot; the DevTools protocol is JSON over one WebSocket, a few lines with the
``websockets`` package (already installed: langsmith depends on it).

Usage::

    with Browser.launch() as browser:
        page = browser.new_page(url)
        page.wait_for("document.querySelectorAll('tr.backend').length == 2")
        png = page.screenshot()

:func:`chromium_path` finds the binary (None when it is not installed);
:func:`require_chromium` is the test-side rule: skip with a reason locally, fail in CI.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

__all__ = ["Browser", "BrowserError", "Page", "chromium_path", "require_chromium"]

_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


class BrowserError(RuntimeError):
    """The browser could not start, or a DevTools command failed or timed out."""


def chromium_path() -> str | None:
    """The chromium (or Chrome) binary on PATH, or ``$CONTEXTHARBOR_CHROMIUM``; None if absent."""
    explicit = os.environ.get("CONTEXTHARBOR_CHROMIUM")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    for name in _CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def require_chromium() -> str:
    """The chromium binary for a browser test: a skip with a reason when it is missing
    locally, a failure when ``CI=true`` (or ``CONTEXTHARBOR_REQUIRE_CHROMIUM=1``), where
    ``scripts/ci_system_deps.sh`` should have installed it."""
    import pytest

    path = chromium_path()
    if path is not None:
        return path
    reason = "chromium is not installed (apt-get install chromium, or scripts/ci_system_deps.sh)"
    if os.environ.get("CI", "").lower() == "true" or os.environ.get(
        "CONTEXTHARBOR_REQUIRE_CHROMIUM"
    ) == "1":
        pytest.fail(f"{reason}, and this is CI")
    pytest.skip(reason)


class Page:
    """One tab, attached through a flat DevTools session."""

    def __init__(self, browser: Browser, session: str, target: str) -> None:
        self._browser = browser
        self._session = session
        self.target = target

    def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self._browser.send(method, params, session=self._session)

    def navigate(self, url: str) -> None:
        self.send("Page.navigate", {"url": url})

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page (promises awaited)."""
        r = self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in r:
            raise BrowserError(f"{expression!r} raised: {r['exceptionDetails']}")
        return r.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 10.0, interval: float = 0.05) -> Any:
        """Poll ``expression`` until it is truthy; its value, or BrowserError after
        ``timeout`` seconds (naming the expression and its last value)."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while True:
            try:
                last = self.evaluate(expression)
            except BrowserError as exc:  # e.g. the page is still loading
                last = exc
            if last and not isinstance(last, BrowserError):
                return last
            if time.monotonic() >= deadline:
                raise BrowserError(
                    f"timed out after {timeout}s waiting for {expression!r}: {last!r}"
                )
            time.sleep(interval)

    def text(self, selector: str = "body") -> str:
        """The rendered text of the first element matching ``selector`` ('' if none)."""
        value = self.evaluate(
            f"(document.querySelector({json.dumps(selector)}) || {{innerText: ''}}).innerText"
        )
        return str(value or "")

    def screenshot(self, width: int = 1280, height: int = 900) -> bytes:
        """A PNG of the page at ``width`` x ``height`` CSS pixels (full page height when
        the content is taller)."""
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        full = self.evaluate("document.documentElement.scrollHeight") or height
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": max(height, int(full)), "deviceScaleFactor": 1,
             "mobile": False},
        )
        r = self.send("Page.captureScreenshot", {"format": "png"})
        return base64.b64decode(r["data"])


class Browser:
    """A headless chromium process and its browser-level DevTools WebSocket."""

    def __init__(
        self, proc: subprocess.Popen[bytes], ws: Any, profile: str, stack: ExitStack
    ) -> None:
        self._proc = proc
        self._ws = ws
        self._stack = stack
        self._profile = profile
        self._ids = itertools.count(1)
        self.timeout = 15.0
        """Seconds one DevTools command may take."""

    @classmethod
    def launch(cls, binary: str | None = None, *, start_timeout: float = 30.0) -> Browser:
        from websockets.sync.client import connect

        path = binary or chromium_path()
        if path is None:
            raise BrowserError("chromium is not installed")
        profile = tempfile.mkdtemp(prefix="contextharbor-chromium-")
        args = [
            path,
            "--headless=new",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-dev-shm-usage",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "about:blank",
        ]
        # Chromium's sandbox refuses to run as root and needs user namespaces, which many
        # CI containers lack; the browser only ever loads this machine's loopback pages.
        args.insert(1, "--no-sandbox")
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = Path(profile) / "DevToolsActivePort"
        deadline = time.monotonic() + start_timeout
        while True:
            if port_file.exists():
                lines = port_file.read_text().split()
                if len(lines) >= 2:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                shutil.rmtree(profile, ignore_errors=True)
                raise BrowserError(f"chromium did not start (exit status {proc.returncode})")
            time.sleep(0.05)
        stack = ExitStack()
        try:
            ws = stack.enter_context(
                connect(f"ws://127.0.0.1:{lines[0]}{lines[1]}", max_size=64 * 2**20)
            )
        except Exception:
            proc.kill()
            proc.wait()
            shutil.rmtree(profile, ignore_errors=True)
            raise
        return cls(proc, ws, profile, stack)

    def send(
        self, method: str, params: dict[str, Any] | None = None, *, session: str | None = None
    ) -> dict[str, Any]:
        """Send one command and wait for its answer (events in between are dropped)."""
        ident = next(self._ids)
        msg: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if session is not None:
            msg["sessionId"] = session
        self._ws.send(json.dumps(msg))
        deadline = time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError(f"DevTools command {method} timed out")
            try:
                raw = self._ws.recv(timeout=left)
            except TimeoutError:
                continue
            reply = json.loads(raw)
            if reply.get("id") != ident:
                continue
            if "error" in reply:
                raise BrowserError(f"{method}: {reply['error']}")
            result: dict[str, Any] = reply.get("result", {})
            return result

    def new_page(self, url: str = "about:blank") -> Page:
        """Open a tab at ``url`` and wait until its document has loaded."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        page = Page(self, session, target)
        page.send("Page.enable")
        page.send("Runtime.enable")
        if url != "about:blank":
            page.navigate(url)
            page.wait_for(
                f"location.href.startsWith({json.dumps(url)}) && document.readyState == 'complete'"
            )
        return page

    def close(self) -> None:
        try:
            self._stack.close()
        finally:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
