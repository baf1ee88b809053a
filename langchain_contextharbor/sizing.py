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
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

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

KIB = 1024
MIB = 1024**2
GIB = 1024**3

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

DEFAULT_NUM_CTX = 4096
"""Ollama's default context length (``OLLAMA_CONTEXT_LENGTH``, 0.12.0 to 0.15.4).

Used when a caller passes ``num_ctx <= 0`` ("let the server decide").
"""

DEFAULT_QUANTIZATION = "q4_K_M"
"""What ``ollama pull <model>:<size>`` gives you when the tag names no quantization."""

SizeSource = Literal["tags", "table", "tag", "show", "unknown"]

# Ollama's default registry and namespace; ``ollama`` itself displays names without them.
_REGISTRY_HOST = "registry.ollama.ai/"
_LIBRARY_NAMESPACE = "library/"

# ---------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------


def _split_tag(name: str) -> tuple[str, str | None]:
    """Split ``[host/][ns/]model[:tag]`` into (everything before the tag, tag).

    Only a colon in the *last* path segment separates a tag: ``localhost:5000/m`` has a port,
    not a tag.
    """
    head, sep, last = name.rpartition("/")
    model, colon, tag = last.partition(":")
    prefix = f"{head}{sep}{model}"
    return prefix, (tag if colon else None)


def normalize_model_name(name: str) -> str:
    """Return the canonical form of an Ollama model name, for comparing and table lookups.

    Ollama treats ``Llama3.2``, ``llama3.2:latest`` and ``registry.ollama.ai/library/llama3.2``
    as the same model; /api/tags and /api/ps always report the explicit ``:latest`` form, so
    that is the canonical one here. Lower-cases, strips the default registry host and the
    ``library/`` namespace, and adds ``:latest`` when there is no tag.
    """
    n = name.strip().lower()
    if n.startswith(_REGISTRY_HOST):
        n = n[len(_REGISTRY_HOST) :]
    if n.startswith(_LIBRARY_NAMESPACE):
        n = n[len(_LIBRARY_NAMESPACE) :]
    prefix, tag = _split_tag(n)
    if not tag:
        return f"{prefix}:latest"
    return n


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
# Parameter counts and quantization
# ---------------------------------------------------------------------------------------------

# "7b", "0.5b", "135m", "1t", "8x22b" -- a whole token, nothing else in it. No "k": in tags
# like "yarn-mistral:7b-128k" that is a context length, not a parameter count.
_COUNT_RE = re.compile(r"(?:(\d+)x)?(\d+(?:\.\d+)?)([mbt])")
_COUNT_UNITS = {"m": 1e-3, "b": 1.0, "t": 1e3}
_TOKEN_SPLIT_RE = re.compile(r"[-_\s]+")


def _parse_count_token(token: str) -> float | None:
    match = _COUNT_RE.fullmatch(token.strip().lower())
    if match is None:
        return None
    experts, number, unit = match.groups()
    value = float(number) * _COUNT_UNITS[unit]
    if experts is not None:
        value *= int(experts)
    return value if value > 0 else None


def parse_parameter_count(name: str) -> float | None:
    """Billions of parameters named by a model reference, or ``None`` when it names none.

    The tag is read first: ``qwen2.5:7b`` -> 7, ``qwen2.5:0.5b`` -> 0.5, ``smollm2:135m`` ->
    0.135, ``llama3.1:70b-instruct-q4_K_M`` -> 70, ``qwen3:30b-a3b`` -> 30 (the first count is
    the total; ``a3b`` is the *active* count, which does not decide memory). Mixture-of-experts
    tags like ``mixtral:8x22b`` give experts x size = 176: every expert must be resident even
    though only two run per token. That product over-counts the shared attention weights
    (Mixtral 8x22B really has ~141B parameters), which errs on the safe side.

    When the tag has no count, a dash- or underscore-separated token of the model name itself
    is tried (``hf.co/org/SmolLM2-135M-Instruct-GGUF:Q4_K_M`` -> 0.135). ``llama3.2`` and
    ``llama3.2:latest`` name no count and give ``None``.
    """
    prefix, tag = _split_tag(name.strip())
    if tag:
        for token in _TOKEN_SPLIT_RE.split(tag):
            count = _parse_count_token(token)
            if count is not None:
                return count
    model = prefix.rpartition("/")[2]
    for token in _TOKEN_SPLIT_RE.split(model):
        count = _parse_count_token(token)
        if count is not None:
            return count
    return None


def parse_parameter_size(details_parameter_size: str) -> float | None:
    """Billions of parameters from /api/tags ``details.parameter_size`` ("3.2B", "135M", "8x22B").

    Returns ``None`` for an empty or unrecognised value rather than guessing.
    """
    if not isinstance(details_parameter_size, str):
        return None
    return _parse_count_token(details_parameter_size.replace(" ", ""))


# Average bytes per weight of GGUF quantization types, i.e. bits-per-weight / 8 including the
# per-block scales (llama.cpp's published bpw figures for 7B-8B models; small tensors kept at
# higher precision are folded into the average).
_BYTES_PER_PARAMETER: dict[str, float] = {
    "q2_K": 0.33,
    "q3_K_S": 0.43,
    "q3_K_M": 0.49,
    "q3_K_L": 0.53,
    "iq2_XXS": 0.26,
    "iq2_XS": 0.29,
    "iq3_XXS": 0.38,
    "iq3_S": 0.43,
    "iq4_XS": 0.53,
    "iq4_NL": 0.5625,
    "q4_0": 0.5625,
    "q4_1": 0.625,
    "q4_K_S": 0.57,
    "q4_K_M": 0.60,
    "mxfp4": 0.53,
    "q5_0": 0.6875,
    "q5_1": 0.75,
    "q5_K_S": 0.69,
    "q5_K_M": 0.71,
    "q6_K": 0.82,
    "q8_0": 1.0625,
    "f16": 2.0,
    "bf16": 2.0,
    "f32": 4.0,
}

_QUANT_TOKEN_RE = re.compile(
    r"(?P<q>i?q\d(?:_[0-9a-z]+)*)|(?P<f>fp16|f16|bf16|fp32|f32|mxfp4)", re.IGNORECASE
)
_QUANT_SPLIT_RE = re.compile(r"[-:/\s.]+")


def _canonical_quant(token: str) -> str | None:
    match = _QUANT_TOKEN_RE.fullmatch(token)
    if match is None:
        return None
    if match.group("f"):
        low = token.lower()
        return {"fp16": "f16", "fp32": "f32"}.get(low, low)
    head, _, rest = token.partition("_")
    head = head.lower()
    if not rest:
        return head
    return "_".join([head, *(part.upper() if part.isalpha() else part for part in rest.split("_"))])


def parse_quantization(name_or_level: str | None) -> str | None:
    """Canonical GGUF quantization type from a model name or a ``quantization_level``.

    Accepts both ``details.quantization_level`` values ("Q4_K_M", "F16", "BF16") and model
    references whose tag carries the type ("llama3.1:70b-instruct-q4_K_M",
    "qwen2.5:1.5b-instruct-fp16"). Returns llama.cpp's spelling with a lower-case prefix:
    ``q4_K_M``, ``q8_0``, ``iq4_XS``, ``f16`` (for fp16/F16), ``bf16``, ``f32``; ``None`` when
    no type is named, which callers treat as Ollama's default :data:`DEFAULT_QUANTIZATION`.
    """
    if not name_or_level:
        return None
    tokens = [t for t in _QUANT_SPLIT_RE.split(name_or_level.strip()) if t]
    # The quantization is conventionally the last part of a tag; scan from the end.
    for token in reversed(tokens):
        quant = _canonical_quant(token)
        if quant is not None:
            return quant
    return None


def bytes_per_parameter(quant: str | None) -> float:
    """Average bytes per weight for a GGUF quantization type.

    Unknown or missing types count as q4_K_M (0.60), which is what Ollama's library serves by
    default. A q-type missing from the table (say a new ``q4_K_XL``) is estimated from its bit
    count so that ``q3_*`` and ``q6_*`` variants are not all priced like q4.
    """
    canonical = parse_quantization(quant) if quant else None
    if canonical is None:
        return _BYTES_PER_PARAMETER[DEFAULT_QUANTIZATION]
    known = _BYTES_PER_PARAMETER.get(canonical)
    if known is not None:
        return known
    bits = re.match(r"i?q(\d)", canonical)
    if bits is not None:
        # bits per weight plus ~0.8 bit of block scales, the K-quant average.
        return (int(bits.group(1)) + 0.8) / 8
    return _BYTES_PER_PARAMETER[DEFAULT_QUANTIZATION]


def _as_billions(parameter_count: float | None) -> float | None:
    """Accept a count in billions *or* a raw count (as /api/show reports it).

    No model has a million billion parameters, so values >= 1e6 are raw counts. This keeps a
    caller who passes ``general.parameter_count`` straight through from a 1e9x error.
    """
    if parameter_count is None or isinstance(parameter_count, bool):
        return None
    try:
        value = float(parameter_count)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(value) or value <= 0:
        return None
    return value / 1e9 if value >= 1e6 else value


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
    billions = _as_billions(parameter_count)
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
# Architecture and KV cache
# ---------------------------------------------------------------------------------------------


def _positive_int(value: object) -> int | None:
    """A positive int from a JSON value, or ``None`` for anything odd.

    Some architectures store per-layer arrays (e.g. ``head_count_kv`` varying by layer); the
    largest entry is the safe single figure. Non-verbose /api/show blanks long arrays to ``[]``.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    if isinstance(value, float):
        if math.isfinite(value) and value > 0 and value == int(value):
            return int(value)
        return None
    if isinstance(value, str):
        try:
            return _positive_int(int(value.strip()))
        except ValueError:
            return None
    if isinstance(value, (list, tuple)):
        items = [v for v in (_positive_int(x) for x in value) if v is not None]
        return max(items) if items else None
    return None


@dataclass(frozen=True)
class ArchInfo:
    """The architecture facts /api/show's ``model_info`` gives, all optional.

    ``parameter_count`` is the raw count as reported (``8190735360``), not billions; see
    :attr:`parameter_billions`. ``key_length``/``value_length`` are per-head sizes that some
    architectures (gemma) set explicitly instead of ``embedding_length / head_count``.
    ``quantization`` is ``details.quantization_level`` in canonical form ("q4_K_M"), for
    :func:`estimate_model_bytes`'s ``quantization`` argument.
    """

    architecture: str | None = None
    parameter_count: int | None = None
    context_length: int | None = None
    block_count: int | None = None
    head_count: int | None = None
    head_count_kv: int | None = None
    embedding_length: int | None = None
    key_length: int | None = None
    value_length: int | None = None
    quantization: str | None = None

    @property
    def parameter_billions(self) -> float | None:
        """``parameter_count`` in billions, or ``None``."""
        return self.parameter_count / 1e9 if self.parameter_count else None

    @classmethod
    def from_show(cls, show_json: Mapping[str, Any] | None) -> ArchInfo:
        """Read an /api/show response; missing or malformed fields become ``None``.

        Never raises: a server that returns ``model_info: {}`` (or garbage) just yields an
        empty ``ArchInfo`` and the estimators fall back to heuristics. When
        ``general.parameter_count`` is absent, ``details.parameter_size`` ("8.2B") is used.
        """
        if not isinstance(show_json, Mapping):
            return cls()
        info = show_json.get("model_info")
        if not isinstance(info, Mapping):
            info = {}
        arch_value = info.get("general.architecture")
        arch = arch_value.strip() if isinstance(arch_value, str) and arch_value.strip() else None

        def field(suffix: str) -> int | None:
            return _positive_int(info.get(f"{arch}.{suffix}")) if arch else None

        details = show_json.get("details")
        if not isinstance(details, Mapping):
            details = {}
        params = _positive_int(info.get("general.parameter_count"))
        if params is None:
            size = details.get("parameter_size")
            billions = parse_parameter_size(size) if isinstance(size, str) else None
            if billions is not None:
                params = round(billions * 1e9)
        level = details.get("quantization_level")
        return cls(
            architecture=arch,
            parameter_count=params,
            context_length=field("context_length"),
            block_count=field("block_count"),
            head_count=field("attention.head_count"),
            head_count_kv=field("attention.head_count_kv"),
            embedding_length=field("embedding_length"),
            key_length=field("attention.key_length"),
            value_length=field("attention.value_length"),
            quantization=parse_quantization(level) if isinstance(level, str) else None,
        )


# KV-cache heuristic when the architecture is unknown, in bytes per token at f16.
# Reference: llama-3.1-8B has 32 layers x 8 KV heads x 128 head dim -> K+V = 2 x 32 x 1024 x 2 B
# = 128 KiB per token. Smaller modern models are below that (llama-3.2-3B 112 KiB, qwen2.5-7B
# 56 KiB, llama-3.2-1B 32 KiB), so 128 KiB is used flat up to 8B. Above 8B, depth and KV width
# each grow roughly with the cube root of the parameter count, so the figure scales as
# (P / 8B)^(2/3): 32B -> ~323 KiB (qwen2.5-32B: 256), 70B -> ~544 KiB (llama-3.1-70B: 320).
# Old models without grouped-query attention (llama-2, phi-3) use 3-4x more; their /api/show
# data, when available, is used instead of this.
_KV_REF_BYTES_PER_TOKEN = 128 * KIB
_KV_REF_BILLIONS = 8.0
# With no parameter count either: as much as a ~32B-class model, twice the 8B figure.
_KV_UNKNOWN_BYTES_PER_TOKEN = 256 * KIB


def _kv_bytes_per_token_f16_heuristic(billions: float | None) -> float:
    if billions is None:
        return float(_KV_UNKNOWN_BYTES_PER_TOKEN)
    scale: float = max(1.0, billions / _KV_REF_BILLIONS) ** (2.0 / 3.0)
    return _KV_REF_BYTES_PER_TOKEN * scale


def _kv_elements_per_token(arch: ArchInfo) -> int | None:
    """K+V elements per token across all layers, from the architecture, or ``None``."""
    layers = arch.block_count
    if layers is None:
        return None
    heads = arch.head_count
    # GGUF semantics: a missing head_count_kv means no grouped-query attention.
    kv_heads = arch.head_count_kv or heads
    head_dim = arch.embedding_length // heads if arch.embedding_length and heads else None
    key_len = arch.key_length or head_dim
    value_len = arch.value_length or head_dim
    if kv_heads is not None and key_len is not None and value_len is not None:
        return layers * kv_heads * (key_len + value_len)
    if arch.embedding_length is not None:
        # Heads unknown: assume full multi-head attention, the largest cache for this width.
        return layers * 2 * arch.embedding_length
    return None


def estimate_kv_cache_bytes(
    num_ctx: int,
    arch: ArchInfo | None,
    *,
    parameter_count: float | None = None,
    parallel: int = 1,
    bytes_per_element: float = 2.0,
) -> int:
    """Bytes of KV cache Ollama allocates for ``num_ctx`` tokens x ``parallel`` slots.

    Exact formula from the architecture: 2 (K and V) x layers x num_ctx x parallel x
    (embedding_length x head_count_kv / head_count) x bytes_per_element (2.0 for the default
    f16 cache; ~1.06 for ``OLLAMA_KV_CACHE_TYPE=q8_0``, ~0.56 for q4_0). Ollama sizes the cache
    ``num_ctx x OLLAMA_NUM_PARALLEL``, and caps ``num_ctx`` at the model's trained
    ``context_length``, so the same cap is applied here.

    Without layer data, the per-token figure comes from a heuristic on the parameter count
    (``parameter_count`` in billions or raw, else ``arch.parameter_count``): 128 KiB/token
    (llama-3.1-8B at f16) up to 8B, scaled by (P/8B)^(2/3) above; with no count at all,
    256 KiB/token. ``num_ctx <= 0`` means the server default, :data:`DEFAULT_NUM_CTX`.
    """
    ctx = num_ctx if num_ctx > 0 else DEFAULT_NUM_CTX
    if arch is not None and arch.context_length:
        ctx = min(ctx, arch.context_length)
    slots = max(1, parallel)
    per_element = bytes_per_element if bytes_per_element > 0 else 2.0

    elements = _kv_elements_per_token(arch) if arch is not None else None
    if elements is not None:
        return math.ceil(elements * ctx * slots * per_element)

    billions = _as_billions(parameter_count)
    if billions is None and arch is not None:
        billions = arch.parameter_billions
    per_token_f16 = _kv_bytes_per_token_f16_heuristic(billions)
    return math.ceil(per_token_f16 * (per_element / 2.0) * ctx * slots)


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
    if _as_billions(count) is None and (arch is None or arch.parameter_count is None):
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
