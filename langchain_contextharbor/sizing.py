"""Memory-size estimates for Ollama models: pure functions, no I/O.

The router has to decide whether a request fits on the GPU server *before* sending it, because
Ollama itself only finds out while loading (and then either spills layers to the CPU or fails
with "requires more system memory"). Everything here turns the few facts a router can cheaply
know about a model -- its name, the ``size`` from ``/api/tags``, ``details`` and ``model_info``
from ``/api/show``, a user-supplied table -- into byte counts, and says where each number came
from so a routing decision can be explained.

Units: every size is in bytes (``int``). The public size table (:data:`DEFAULT_MODEL_SIZES` and
the user's ``model_sizes``) is written in "GB", but those GB are **GiB** (``1024**3`` bytes):
the numbers are compared with NVML readings, which are binary. Parameter counts are in
**billions** unless said otherwise; /api/show reports raw counts, which
:func:`estimate_model_bytes` and :func:`estimate_kv_cache_bytes` recognise and convert.

All estimates are deliberately a little pessimistic: under-estimating makes the router send a
model to a GPU where it ends up partially offloaded (slow) or failing to load; over-estimating
only costs a trip to the CPU server.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

# Re-exported: callers import every name of the size estimates from here.
from langchain_contextharbor._kv_cache import (
    DEFAULT_NUM_CTX,
    GIB,
    KIB,
    MIB,
    ArchInfo,
    estimate_kv_cache_bytes,
)
from langchain_contextharbor._tags import (
    DEFAULT_QUANTIZATION,
    as_billions,
    bytes_per_parameter,
    normalize_model_name,
    parse_parameter_count,
    parse_parameter_size,
    parse_quantization,
)

__all__ = [
    "DEFAULT_MODEL_SIZES",
    "DEFAULT_NUM_CTX",
    "DEFAULT_QUANTIZATION",
    "GIB",
    "KIB",
    "MIB",
    "ArchInfo",
    "RequestFootprint",
    "SizeEstimate",
    "SizeSource",
    "bytes_per_parameter",
    "estimate_kv_cache_bytes",
    "estimate_model_bytes",
    "estimate_overhead_bytes",
    "estimate_request_bytes",
    "format_bytes",
    "lookup_model_size",
    "normalize_model_name",
    "parse_parameter_count",
    "parse_parameter_size",
    "parse_quantization",
    "validate_model_sizes",
]

DEFAULT_MODEL_SIZES: dict[str, float] = {
    "llama3.2:1b": 1,
    "llama3.2:3b": 2,
    "llama3.1:8b": 6,
    "llama3.2:11b": 8,
    "qwen2.5:32b": 20,
    "llama3.1:70b": 42,
    "mixtral:8x22b": 65,
}
"""Approximate resident size of common models, in GiB (written "GB" in the docs).

These are rounded *up* from the q4_K_M download sizes, so they leave some slack for the
runtime; :func:`estimate_request_bytes` still adds the KV cache and overhead on top.
"""

SizeSource = Literal["tags", "table", "tag", "show", "unknown"]

# ---------------------------------------------------------------------------------------------
# The size table
# ---------------------------------------------------------------------------------------------


def lookup_model_size(name: str, sizes: Mapping[str, float]) -> tuple[str, float] | None:
    """Find ``name`` in a size table; return ``(matched key, GiB)`` or ``None``.

    An exact key wins; otherwise keys and name are compared in normalised form, so a table
    entry ``llama3.2`` matches ``llama3.2:latest`` (and vice versa). A different tag never
    matches: ``llama3.1:8b-instruct-fp16`` is not the 6 GiB ``llama3.1:8b``.
    """
    if name in sizes:
        return name, sizes[name]
    wanted = normalize_model_name(name)
    for key, value in sizes.items():
        if normalize_model_name(key) == wanted:
            return key, value
    return None


def _check_size_value(model: str, value: object) -> float:
    """Return ``value`` as a float or raise ``ValueError`` naming the model."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"model size for {model!r} must be a number of GB (GiB), got {value!r}")
    size = float(value)
    if not math.isfinite(size):
        raise ValueError(f"model size for {model!r} must be finite, got {value!r}")
    if size < 0:
        raise ValueError(f"model size for {model!r} must not be negative, got {value!r}")
    return size


def validate_model_sizes(mapping: Mapping[str, Any]) -> dict[str, float]:
    """Check a user's ``{model: GB}`` table and return it as ``dict[str, float]``.

    A NaN or infinite size would make every "does it fit" comparison silently false (or true),
    so bad entries are rejected up front with a message that names the model. Keys are kept as
    given; :func:`lookup_model_size` normalises when matching.
    """
    result: dict[str, float] = {}
    for key, value in mapping.items():
        if not isinstance(key, str) or not key.strip():
            raise ValueError(f"model size table keys must be model names, got {key!r}")
        result[key] = _check_size_value(key, value)
    return result


# ---------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SizeEstimate:
    """How many bytes a model's weights take, and where that figure came from.

    ``source`` is one of ``"tags"`` (the server's own file size), ``"table"`` (the user's or
    the default size table), ``"show"`` (parameter count from /api/show), ``"tag"`` (parameter
    count read from the model name) or ``"unknown"``.
    """

    bytes: int
    source: SizeSource
    detail: str

    @property
    def known(self) -> bool:
        """False when nothing was known and ``bytes`` is only a default."""
        return self.source != "unknown"


def estimate_model_bytes(
    name: str,
    *,
    sizes: Mapping[str, float],
    tags_size: int | None = None,
    parameter_count: float | None = None,
    quantization: str | None = None,
    default_bytes: int | None = None,
) -> SizeEstimate:
    """Estimate the bytes of a model's weights, from the best source available.

    Precedence, most trustworthy first:

    1. ``tags_size``: the ``size`` the server reports in /api/tags -- the real GGUF file size,
       i.e. weights only.
    2. the size table ``sizes`` (GiB): what the user told us, or :data:`DEFAULT_MODEL_SIZES`.
    3. a parameter count x :func:`bytes_per_parameter`: ``parameter_count`` (billions or a raw
       count, from /api/show) if given, else the count parsed from the name. The quantization
       is ``quantization`` (e.g. ``details.quantization_level``), else parsed from the name,
       else q4_K_M.
    4. ``default_bytes`` (or 0) with source ``"unknown"``.

    Raises ``ValueError`` naming the model if its table entry is negative, NaN or infinite.
    """
    if tags_size is not None and not isinstance(tags_size, bool) and tags_size > 0:
        size = int(tags_size)
        return SizeEstimate(size, "tags", f"{format_bytes(size)} from the server's /api/tags")

    found = lookup_model_size(name, sizes)
    if found is not None:
        key, gib = found
        size = round(_check_size_value(key, gib) * GIB)
        return SizeEstimate(size, "table", f"{format_bytes(size)} from the size table ({key})")

    source: SizeSource
    billions = as_billions(parameter_count)
    if billions is not None:
        source = "show"
    else:
        billions = parse_parameter_count(name)
        source = "tag"
    if billions is not None:
        quant = parse_quantization(quantization) or parse_quantization(name)
        per_param = bytes_per_parameter(quant)
        quant_label = quant or f"{DEFAULT_QUANTIZATION}, assumed"
        size = round(billions * 1e9 * per_param)
        where = "/api/show" if source == "show" else "the model tag"
        return SizeEstimate(
            size,
            source,
            f"{format_bytes(size)} from {_format_billions(billions)} parameters ({where}) "
            f"x {per_param:.2f} bytes ({quant_label})",
        )

    size = max(0, int(default_bytes or 0))
    detail = f"size unknown, assuming {format_bytes(size)}" if size else "size unknown"
    return SizeEstimate(size, "unknown", detail)


def _format_billions(billions: float) -> str:
    if billions < 1:
        millions = billions * 1000
        return f"{millions:.0f}M" if millions >= 100 else f"{millions:.3g}M"
    return f"{billions:.0f}B" if billions >= 100 else f"{billions:.3g}B"


# ---------------------------------------------------------------------------------------------
# Whole-request footprint
# ---------------------------------------------------------------------------------------------

_OVERHEAD_FIXED = 256 * MIB
_OVERHEAD_FRACTION = 0.05


def estimate_overhead_bytes(weights_bytes: int) -> int:
    """Compute-graph and runtime overhead: 256 MiB + 5% of the weights.

    The fixed part covers the CUDA context and scratch buffers every runner has; the
    proportional part covers the compute graph and output buffers, which grow with the
    model's width. Ollama measures the graph at load time; this is a stand-in of the same
    order (a few hundred MiB for 8B models, ~2-3 GiB for 70B).
    """
    return _OVERHEAD_FIXED + round(max(0, weights_bytes) * _OVERHEAD_FRACTION)


@dataclass(frozen=True)
class RequestFootprint:
    """Memory a request needs on the server that loads the model, broken down."""

    weights_bytes: int
    kv_cache_bytes: int
    overhead_bytes: int
    total_bytes: int
    num_ctx: int = DEFAULT_NUM_CTX
    parallel: int = 1

    def describe(self) -> str:
        """One line for logs and routing explanations, e.g.
        ``weights 4.7 GiB + KV cache 0.5 GiB (num_ctx 4096) + overhead 0.4 GiB = 5.6 GiB``.
        """
        ctx = f"num_ctx {self.num_ctx}"
        if self.parallel > 1:
            ctx += f" x {self.parallel} parallel"
        return (
            f"weights {format_bytes(self.weights_bytes)}"
            f" + KV cache {format_bytes(self.kv_cache_bytes)} ({ctx})"
            f" + overhead {format_bytes(self.overhead_bytes)}"
            f" = {format_bytes(self.total_bytes)}"
        )


def estimate_request_bytes(
    weights: SizeEstimate,
    *,
    num_ctx: int,
    arch: ArchInfo | None = None,
    parameter_count: float | None = None,
    parallel: int = 1,
    kv_bytes_per_element: float = 2.0,
) -> RequestFootprint:
    """Total memory to serve a request: weights + KV cache + overhead.

    ``weights`` is taken as weights only (the /api/tags size is just the file), so the KV
    cache and the overhead are always added. When neither ``parameter_count`` nor
    ``arch.parameter_count`` is known, the KV heuristic infers a count from the weights at
    q4_K_M density -- for f16 weights that overstates it, which errs on the safe side.
    """
    ctx = num_ctx if num_ctx > 0 else DEFAULT_NUM_CTX
    if arch is not None and arch.context_length:
        ctx = min(ctx, arch.context_length)
    slots = max(1, parallel)
    count = parameter_count
    if as_billions(count) is None and (arch is None or arch.parameter_count is None):
        if weights.known and weights.bytes > 0:
            count = weights.bytes / (bytes_per_parameter(None) * 1e9)
    kv = estimate_kv_cache_bytes(
        ctx, arch, parameter_count=count, parallel=slots, bytes_per_element=kv_bytes_per_element
    )
    overhead = estimate_overhead_bytes(weights.bytes)
    total = weights.bytes + kv + overhead
    return RequestFootprint(
        weights_bytes=weights.bytes,
        kv_cache_bytes=kv,
        overhead_bytes=overhead,
        total_bytes=total,
        num_ctx=ctx,
        parallel=slots,
    )


def format_bytes(n: float) -> str:
    """Human-readable binary size with one decimal: ``6.0 GiB``, ``512.0 MiB``, ``900 B``."""
    sign = "-" if n < 0 else ""
    value = abs(float(n))
    for unit, scale in (("TiB", 1024**4), ("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if value >= scale:
            return f"{sign}{value / scale:.1f} {unit}"
    return f"{sign}{int(value)} B"
