"""How a backend's secrets are held: :class:`SecretUrl` (a URL masked in every view),
the secret headers' auth flow, and the refusal of query parameters in client kwargs.

Why apart from :mod:`.backends`: the fleet setup and the models hold secret URLs too, and
what masks a secret should be read in one place, not among the configuration fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx
from pydantic import SecretStr

from langchain_contextharbor._urls import redact_url
from langchain_contextharbor.errors import ConfigurationError

__all__ = ["SecretUrl", "hold_secret_url", "refuse_query_params", "reveal"]


class SecretUrl(str):
    """A URL that carries a secret (``user:password@``, a query or a fragment), held so
    that no view of an object shows it: ``repr``, ``str``, ``format`` (f-strings, logging's
    ``%s``/``%r``) and therefore ``vars()``/``pprint`` show :func:`redact_url`'s form.

    Why a ``str`` and not a wrapper like pydantic's ``SecretStr``: the fields holding it
    (``BackendConfig.base_url``, the models' ``base_url``/``gpu_url``/``cpu_url``,
    ``shared_state``) keep their ``str`` type, so comparing, parsing (``httpx.URL``,
    ``redis.Redis.from_url``) and handing one to ``ChatOllama(base_url=...)`` work as
    before; only the ways an object is *shown* are masked. ``get_secret_value()`` returns
    the plain ``str`` (as ``SecretStr`` does).

    Pickling is refused (``TypeError``): a pickle is written to disk or a socket in the
    clear, and one with the secret masked would unpickle into a URL that fails to
    authenticate, far from the cause. Build the configuration in the other process (from
    the environment) instead. A URL without a secret is never a ``SecretUrl``
    (:func:`hold_secret_url` returns it as it is), so it pickles as before. Copies
    (``copy``/``deepcopy``, ``model_copy``) return the same immutable object.
    """

    __slots__ = ()

    def get_secret_value(self) -> str:
        return str.__str__(self)

    def __repr__(self) -> str:
        return repr(redact_url(self.get_secret_value()))

    def __str__(self) -> str:
        return redact_url(self.get_secret_value())

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError(
            f"a URL with credentials ({self}) is not pickled: a pickle would hold them in "
            "the clear. Build the configuration where it is used (e.g. from the environment)"
        )

    def __reduce__(self) -> Any:
        return self.__reduce_ex__(None)

    def __copy__(self) -> SecretUrl:
        return self

    def __deepcopy__(self, memo: Any) -> SecretUrl:
        return self


def hold_secret_url(url: str) -> str:
    """``url`` as a :class:`SecretUrl` when it carries a secret (credentials, a query, a
    fragment), else as it is: what every URL field stores."""
    if type(url) is str and redact_url(url) != url:
        return SecretUrl(url)
    return url


def reveal(url: str) -> str:
    """The plain ``str`` of a URL field, secret or not (for the few places that build a
    connection from it)."""
    return url.get_secret_value() if isinstance(url, SecretUrl) else url


class _SecretHeaders(httpx.Auth):
    """Adds a backend's secret headers to each request as it is sent.

    Why an ``httpx.Auth`` and not the clients' ``headers=``: a client keeps its default
    headers as plain strings (``vars(client)``, and the ``client_kwargs`` of the inner
    ChatOllama that builds it, would show an ``Authorization`` value); an auth flow keeps
    them as ``SecretStr`` until the request leaves. Requests themselves carry the real
    values (the server needs them); errors that reach the caller carry masked copies (see
    :func:`langchain_contextharbor.errors.scrub_exception`)."""

    def __init__(self, headers: Mapping[str, SecretStr]) -> None:
        self._headers = dict(headers)

    def auth_flow(self, request: httpx.Request) -> Any:
        for name, value in self._headers.items():
            request.headers[name] = value.get_secret_value()
        yield request

    def __repr__(self) -> str:
        return f"_SecretHeaders({sorted(self._headers)})"

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError("a backend's secret headers are not pickled")


def refuse_query_params(kwargs: Mapping[str, Any], what: str) -> None:
    """Refuse ``params`` in httpx ``client_kwargs``, as :func:`validate_base_url` refuses a
    query in a URL: httpx logs every request URL, its query included (``INFO``), and its
    errors quote it. Neither the message nor the log shows a value."""
    params = kwargs.get("params")
    if not params:
        return
    try:
        shown = "&".join(f"{k}=***" for k, _ in httpx.QueryParams(params).multi_items())
    except Exception:
        shown = "***"
    raise ConfigurationError(
        f"{what} must not set params (query parameters {shown or 'none'!r}): like a query "
        "in base_url, httpx logs them with every request URL; send a token as a header"
    )
