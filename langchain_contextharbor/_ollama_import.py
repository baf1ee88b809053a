"""Import ``ollama`` so that no environment setting can make the import raise.

Why: ``import ollama`` builds a module-level default client (``ollama.chat`` and friends)
from the environment: ``OLLAMA_HOST``, ``OLLAMA_API_KEY`` and httpx's proxy and TLS
variables. A bad value there (``OLLAMA_HOST=127.0.0.1:99999``, ``HTTPS_PROXY=garbage://x``,
an ``SSL_CERT_FILE`` that does not exist) raises *during the import*, so
``import langchain_contextharbor`` (which needs ``ollama`` and ``langchain_ollama``) failed
with a traceback from a third-party module before any of this package's code ran, and
``contextharbor check`` could not even say which setting was wrong.

This package never uses that default client: every client it builds gets its host and
options explicitly, and the settings it reads itself are checked where they are used
(``OLLAMA_HOST`` by :func:`~langchain_contextharbor.backends.ollama_host_url`, which raises
:class:`~langchain_contextharbor.errors.ConfigurationError` naming it). So when the first
import fails, it is retried with the culprit hidden, and the environment is put back at
once. Only ``ollama``'s own default client is then built without it (it could not be
built with it), which a WARNING on this package's logger says, naming the variable and
never its value (a proxy URL may carry a password).

The package's ``__init__`` imports this module first, before anything imports ``ollama``;
importing it is what does the guarded import.
"""

from __future__ import annotations

import logging
import os
import sys

__all__ = ["ENV_READ_BY_OLLAMA_IMPORT", "import_ollama"]

ENV_READ_BY_OLLAMA_IMPORT = (
    "OLLAMA_HOST",
    "OLLAMA_API_KEY",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
)
"""What ``ollama``'s import-time default client reads (itself, or through httpx)."""

logger = logging.getLogger("langchain_contextharbor")
# The package's NullHandler, here already: the WARNING below is logged while the package
# imports, and without a handler it would reach Python's last-resort handler (stderr).
if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
    logger.addHandler(logging.NullHandler())


def import_ollama() -> None:
    """Import ``ollama`` (a no-op once imported); never raises for an environment value.

    On failure, each variable of :data:`ENV_READ_BY_OLLAMA_IMPORT` that is set is hidden in
    turn (the usual case: one bad value, found without touching the good ones), then all
    of them. A failure that hiding does not cure (ollama not installed, a broken install)
    is raised as it was."""
    if "ollama" in sys.modules:
        return
    try:
        import ollama  # noqa: F401
    except Exception as first:
        present = [k for k in ENV_READ_BY_OLLAMA_IMPORT if k in os.environ]
        for attempt in [*([k] for k in present), present] if present else []:
            if _import_without(attempt):
                logger.warning(
                    "ollama's module-level default client could not be built from the "
                    "environment (%s); it was built without %s. This package does not use "
                    "that client (it builds its own, for each configured server).",
                    type(first).__name__,
                    ", ".join(attempt),
                )
                return
        raise


def _import_without(names: list[str]) -> bool:
    """Whether ``ollama`` imports with ``names`` hidden from the environment (put back at
    once, whatever happens)."""
    hidden = {k: os.environ.pop(k) for k in names if k in os.environ}
    try:
        import ollama  # noqa: F401
    except Exception:
        return False
    finally:
        os.environ.update(hidden)
    return True


import_ollama()
