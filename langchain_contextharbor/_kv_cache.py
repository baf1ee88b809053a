"""Architecture facts from /api/show and the KV cache they imply: pure arithmetic, no I/O.

Why a module of its own: how many bytes of cache a context of ``num_ctx`` tokens takes is
the one estimate with a formula behind it (layers x KV heads x head size) and a heuristic
for when the formula's inputs are missing; :class:`ArchInfo` is the value that carries those
inputs from a probe to the estimate. The binary units and Ollama's default context length
are defined here, the lowest module that needs them. Everything public is re-exported by
:mod:`~langchain_contextharbor.sizing`, which is where callers import it from.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from langchain_contextharbor._tags import as_billions, parse_parameter_size, parse_quantization

__all__ = [
    "DEFAULT_NUM_CTX",
    "GIB",
    "KIB",
    "MIB",
    "ArchInfo",
    "estimate_kv_cache_bytes",
]

KIB = 1024
MIB = 1024**2
GIB = 1024**3

DEFAULT_NUM_CTX = 4096
"""Ollama's default context length (``OLLAMA_CONTEXT_LENGTH``, 0.12.0 to 0.15.4).

Used when a caller passes ``num_ctx <= 0`` ("let the server decide").
"""

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

    billions = as_billions(parameter_count)
    if billions is None and arch is not None:
        billions = arch.parameter_billions
    per_token_f16 = _kv_bytes_per_token_f16_heuristic(billions)
    return math.ceil(per_token_f16 * (per_element / 2.0) * ctx * slots)
