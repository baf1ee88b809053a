"""Pytest fixtures for fleet mode: a real redis-server on loopback (testing/redis_server.py).

Registered by the ``contextharbor`` pytest plugin beside the stand-in fixtures:

``redis_server`` (function scope)
    One running :class:`RedisServer` on a free loopback port; ``redis_server.url`` is what
    ``HybridChatOllama(shared_state=...)`` takes. Killed after the test.
``redis_server_factory`` (function scope)
    ``redis_server_factory(password="...")`` starts another one; all are killed after the test.

A test using them is skipped with the reason when no ``redis-server`` binary or no ``redis``
client is found; with ``CONTEXTHARBOR_REQUIRE_REDIS=1`` (set by ``.ci/run``) it fails instead.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Iterator

import pytest

from langchain_contextharbor.testing.redis_server import RedisServer, redis_server_binary

__all__ = ["RedisFactory", "redis_server", "redis_server_factory", "redis_skip_reason"]


def redis_skip_reason() -> str | None:
    """Why fleet-mode tests cannot run here, or ``None`` when they can."""
    if redis_server_binary() is None:
        return "redis-server not found (apt-get install redis-server, or scripts/ci_system_deps.sh)"
    if importlib.util.find_spec("redis") is None:
        return "the redis client is not installed (pip install 'langchain-contextharbor[fleet]')"
    return None


def _need_redis() -> None:
    reason = redis_skip_reason()
    if reason is None:
        return
    if os.environ.get("CONTEXTHARBOR_REQUIRE_REDIS") == "1":
        pytest.fail(f"CONTEXTHARBOR_REQUIRE_REDIS=1 but {reason}")
    pytest.skip(reason)


RedisFactory = Callable[..., RedisServer]


@pytest.fixture
def redis_server_factory() -> Iterator[RedisFactory]:
    """Start ``RedisServer(**kw)`` instances; all are killed after the test."""
    _need_redis()
    made: list[RedisServer] = []

    def make(**kw: object) -> RedisServer:
        srv = RedisServer(**kw)  # type: ignore[arg-type]
        made.append(srv)
        return srv.start()

    try:
        yield make
    finally:
        for srv in made:
            srv.close()


@pytest.fixture
def redis_server(redis_server_factory: RedisFactory) -> RedisServer:
    """One running redis-server on a free loopback port for this test."""
    return redis_server_factory()
