"""Model names and tags: the canonical name, parameter counts, quantization types.

Why a module of its own: reading a model reference (``llama3.1:70b-instruct-q4_K_M``) or an
/api/show ``details`` value is parsing, with its own tables of cases, and it is shared by
the size estimates in :mod:`~langchain_contextharbor.sizing`, the KV-cache arithmetic in
:mod:`~langchain_contextharbor._kv_cache` and the router's name matching. Pure functions, no
I/O. The public names are re-exported by :mod:`~langchain_contextharbor.sizing`, which is
where callers import them from.
"""

from __future__ import annotations

import math
import re

__all__ = [
    "DEFAULT_QUANTIZATION",
    "as_billions",
    "bytes_per_parameter",
    "normalize_model_name",
    "parse_parameter_count",
    "parse_parameter_size",
    "parse_quantization",
]

DEFAULT_QUANTIZATION = "q4_K_M"
"""What ``ollama pull <model>:<size>`` gives you when the tag names no quantization."""

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


def as_billions(parameter_count: float | None) -> float | None:
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
