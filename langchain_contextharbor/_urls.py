"""Base-URL validation and credential redaction: pure functions over strings.

Why apart from :mod:`.backends`: every module that shows a URL (errors, the fleet store,
the CLI) needs :func:`redact_url`, and no message of :func:`validate_base_url` may quote a
URL's secret; both depend on nothing of the package but its error type.
"""

from __future__ import annotations

import re

import httpx

from langchain_contextharbor.errors import ConfigurationError

__all__ = ["redact_url", "validate_base_url"]


def validate_base_url(url: str, *, what: str = "base URL") -> str:
    """Return the URL without a trailing slash, or raise ConfigurationError saying why.

    Accepts ``http``/``https`` URLs with a host and optional port and path prefix. No
    message quotes the URL's credentials or query values, nor httpx's own error text
    about them (httpx's "Invalid port: 's3cr3t'" is a password after a ``#``).
    """
    if not isinstance(url, str) or not url.strip():
        shown_bad = "<non-string>" if not isinstance(url, str) else repr(url)
        raise ConfigurationError(f"{what} must be a non-empty string, got {shown_bad}")
    text = url.strip()
    shown = redact_url(text)
    if "://" not in text:
        raise ConfigurationError(
            f"{what} {shown!r} has no scheme; expected e.g. 'http://127.0.0.1:11434'"
        )
    try:
        parsed = httpx.URL(text)
    except Exception:  # httpx.InvalidURL and friends: its text may quote the password
        raise ConfigurationError(
            f"{what} {shown!r} is not a valid URL: {_why_invalid(text)}"
        ) from None
    if parsed.scheme not in ("http", "https"):
        raise ConfigurationError(f"{what} {shown!r}: scheme must be http or https")
    if not parsed.host:
        raise ConfigurationError(f"{what} {shown!r} has no host")
    if any(ch.isspace() for ch in text):
        raise ConfigurationError(f"{what} {shown!r} must not contain whitespace")
    try:
        port = parsed.port
    except Exception:
        raise ConfigurationError(f"{what} {shown!r} has an invalid port") from None
    if port is not None and not 1 <= port <= 65535:
        raise ConfigurationError(f"{what} {shown!r}: port must be 1..65535")
    if parsed.query or parsed.fragment:
        raise ConfigurationError(f"{what} {shown!r} must not have a query or fragment")
    if "@" in text and not parsed.userinfo:
        # An '@' that httpx did not take as the end of credentials: a password with a '/'
        # in it, which would otherwise travel (and be logged) as part of the path.
        raise ConfigurationError(
            f"{what} {shown!r} is not a valid URL: {_why_invalid('http://x:y/@')}"
        )
    return text.rstrip("/")


def _why_invalid(text: str) -> str:
    """httpx's reason a URL is invalid, computed on the redacted URL so it cannot quote a
    secret; when only the original fails, the credentials part is what is malformed."""
    try:
        httpx.URL(redact_url(text))
    except Exception as exc:
        reason = redact_url(str(exc)) if "@" in str(exc) else str(exc)
        return reason.replace(text, redact_url(text))
    return (
        "the credentials part (user:password@) is malformed; percent-encode reserved "
        "characters such as '#', '/', '?' or '@' in the password"
    )


def redact_url(url: str) -> str:
    """Remove credentials from a URL; safe on malformed input.

    ``user:password@`` becomes ``***@`` and every query value and fragment ``***``.
    Everything before the last ``@`` is treated as userinfo, even when a ``/``, ``?`` or
    ``#`` appears in it (a password may contain them): over-redacting a URL whose path or
    query has an ``@`` in it is the safe mistake.
    """
    if not isinstance(url, str):
        return "<invalid url>"
    scheme, sep, rest = url.partition("://")
    if not sep:
        # No "://": keep a scheme-like prefix such as "http:/" (a typo) as it is.
        m = re.match(r"[A-Za-z][A-Za-z0-9+.-]*:/+(?=[^/])", url)
        scheme, rest = (m.group(0), url[m.end() :]) if m and "@" in url[m.end() :] else ("", url)
        sep = ""
    head = rest
    if "@" in head:
        after = head.rsplit("@", 1)[1]
        lead = "//" if head.startswith("//") else ""
        head = f"{lead}***@{after}"
    if "?" in head or "#" in head:
        head = _redact_query(head)
    return f"{scheme}://{head}" if sep else scheme + head


def _redact_query(rest: str) -> str:
    """``host/path?a=1&b#frag`` -> ``host/path?a=***&b=***#***`` (tokens ride in queries)."""
    base, hsep, frag = rest.partition("#")
    path, qsep, query = base.partition("?")
    if qsep:
        parts = [p.split("=", 1)[0] + "=***" if p else p for p in query.split("&")]
        path = f"{path}?{'&'.join(parts)}"
    return f"{path}#***" if hsep and frag else (path + hsep)
