"""Fleet mode's setup: the ``shared_state`` setting resolved to a store, or to none.

Why apart from :mod:`langchain_contextharbor.fleet`: that module is the protocol (the hooks
and the values they exchange), which the Redis implementation imports; choosing and building
an implementation is a step above both, so it lives here and imports the implementation
only when a URL asks for it (``redis`` is never imported otherwise).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from langchain_contextharbor.backends import hold_secret_url
from langchain_contextharbor.errors import ConfigurationError
from langchain_contextharbor.fleet import REDIS_URL_ENV, SharedState

__all__ = ["make_shared_state"]


def make_shared_state(
    spec: str | SharedState | None,
    backends: list[str],
    *,
    clock: Callable[[], float] | None = None,
    env: Mapping[str, str] | None = None,
    **options: Any,
) -> SharedState | None:
    """Resolve the ``shared_state`` argument: None (and no ``CONTEXTHARBOR_REDIS_URL``) or
    ``"local"`` -> None (local mode); a ``redis://`` / ``rediss://`` / ``unix://`` URL ->
    the Redis implementation (needs ``pip install 'langchain-contextharbor[fleet]'``); an
    object implementing :class:`SharedState` is used as it is.

    The URL (given, or from the environment) is handed on as a
    :class:`~langchain_contextharbor.backends.SecretUrl` when it carries a password, so
    the store that keeps it shows it masked (``vars()``, ``repr``) and refuses to pickle
    it; it still parses as the URL it is."""
    if spec is None:
        spec = (os.environ if env is None else env).get(REDIS_URL_ENV) or None
    if spec is None or spec == "local":
        return None
    if not isinstance(spec, str):
        if not isinstance(spec, SharedState):
            raise ConfigurationError(
                f"shared_state must be a redis:// URL or a SharedState, got {type(spec).__name__}"
            )
        return spec
    try:
        from langchain_contextharbor._fleet_redis import RedisSharedState
    except ImportError as exc:
        raise ConfigurationError(
            "fleet mode needs the redis client: pip install 'langchain-contextharbor[fleet]' "
            f"({type(exc).__name__}: {exc})"
        ) from None
    return RedisSharedState(hold_secret_url(spec), backends, clock=clock, **options)
