"""Checks of Ollama's replies before anything believes them: pure functions over decoded
JSON values.

Why here and not in the call loops: a reply is a backend's word, and a backend can be a
crashed runner or a broken proxy. What the client libraries check (ollama-python's pydantic
models) stops a string where a number goes, not a ``NaN`` in a vector, a vector one
dimension short or one vector too few; a RAG index takes those silently and is corrupt.
Each check returns the reason a reply is wrong (``None``: it may be believed), and
:func:`checked_embeddings` raises it as :class:`~._transport.MalformedReply`, which the
classifier treats as a backend fault (failover, counted against the breaker, named in
the error's attempts).

The chat stream's lines are checked by the transport and ollama-python (see
:mod:`._transport` and :func:`~.classify.raised_reading_reply`); the learned speeds
reject implausible timings themselves (:func:`~._facts.learn_speed`).
"""

from __future__ import annotations

import math
from typing import Any

from langchain_contextharbor._transport import MalformedReply

__all__ = ["checked_embeddings", "embeddings_fault"]


def embeddings_fault(vectors: Any, count: int, dim: int | None = None) -> str | None:
    """Why ``vectors`` is not the answer to ``count`` texts, or None. Pure.

    A reply must be a list of ``count`` non-empty vectors, all of one dimension (``dim``,
    the model's, when known: the ``dimensions`` asked for, or the batches already taken
    in this call), each a list of finite numbers. Finiteness is read from the sum of each
    vector (``NaN`` and ``Inf`` propagate; an overflow to ``Inf`` needs values near
    1e308, no embedding), so the check costs one C loop per vector."""
    if not isinstance(vectors, (list, tuple)):
        return f"embeddings of type {type(vectors).__name__}, not a list of vectors"
    if len(vectors) != count:
        return f"{len(vectors)} vectors for {count} texts"
    want = dim
    for i, v in enumerate(vectors):
        if not isinstance(v, (list, tuple)):
            return f"vector {i} of type {type(v).__name__}, not a list of numbers"
        if not v:
            return f"vector {i} is empty"
        if want is None:
            want = len(v)
        elif len(v) != want:
            what = "the model's" if dim is not None else "vector 0's"
            return f"vector {i} has {len(v)} dimensions, {what} {want}"
        try:
            total = sum(v)
        except TypeError:
            return f"vector {i} holds a value that is not a number"
        if not isinstance(total, (int, float)):
            return f"vector {i} holds a value that is not a number"
        if not math.isfinite(total):
            return f"vector {i} holds NaN or infinity"
    return None


def checked_embeddings(
    vectors: Any, count: int, dim: int | None, backend: str
) -> list[list[float]]:
    """``vectors`` when :func:`embeddings_fault` finds nothing; else raise
    :class:`MalformedReply` naming ``backend`` (a backend fault: the batch fails over)."""
    reason = embeddings_fault(vectors, count, dim)
    if reason is not None:
        raise MalformedReply(f"{backend} answered /api/embed with {reason}: a malformed reply")
    return vectors  # type: ignore[no-any-return]
