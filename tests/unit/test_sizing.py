"""Table-driven tests for the pure size estimators in ``langchain_contextharbor.sizing``."""

from __future__ import annotations

import math
from typing import Any

import pytest

from langchain_contextharbor.sizing import (
    DEFAULT_MODEL_SIZES,
    DEFAULT_NUM_CTX,
    GIB,
    KIB,
    MIB,
    ArchInfo,
    RequestFootprint,
    SizeEstimate,
    bytes_per_parameter,
    estimate_kv_cache_bytes,
    estimate_model_bytes,
    estimate_overhead_bytes,
    estimate_request_bytes,
    format_bytes,
    lookup_model_size,
    normalize_model_name,
    parse_parameter_count,
    parse_parameter_size,
    parse_quantization,
    validate_model_sizes,
)

# llama-3.1-8B as /api/show reports it (model_info keys trimmed to what we read).
LLAMA31_8B_SHOW: dict[str, Any] = {
    "details": {"parameter_size": "8.0B", "quantization_level": "Q4_K_M"},
    "model_info": {
        "general.architecture": "llama",
        "general.parameter_count": 8030261248,
        "llama.context_length": 131072,
        "llama.block_count": 32,
        "llama.attention.head_count": 32,
        "llama.attention.head_count_kv": 8,
        "llama.embedding_length": 4096,
    },
}
LLAMA31_8B = ArchInfo.from_show(LLAMA31_8B_SHOW)


# --- names ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("llama3.2", "llama3.2:latest"),
        ("llama3.2:latest", "llama3.2:latest"),
        ("Llama3.1:8B", "llama3.1:8b"),
        ("registry.ollama.ai/library/llama3.1:8b", "llama3.1:8b"),
        ("registry.ollama.ai/library/llama3.2", "llama3.2:latest"),
        ("library/qwen2.5:7b", "qwen2.5:7b"),
        ("registry.ollama.ai/someone/model", "someone/model:latest"),
        ("localhost:5000/foo", "localhost:5000/foo:latest"),
        ("  phi3:3.8b ", "phi3:3.8b"),
    ],
)
def test_normalize_model_name(name: str, expected: str) -> None:
    assert normalize_model_name(name) == expected


@pytest.mark.parametrize(
    ("name", "table", "expected"),
    [
        ("llama3.1:8b", DEFAULT_MODEL_SIZES, ("llama3.1:8b", 6)),
        ("registry.ollama.ai/library/llama3.1:8b", DEFAULT_MODEL_SIZES, ("llama3.1:8b", 6)),
        ("llama3.2:latest", {"llama3.2": 2.5}, ("llama3.2", 2.5)),
        ("llama3.2", {"llama3.2:latest": 2.5}, ("llama3.2:latest", 2.5)),
        # exact key wins over a normalised one
        ("llama3.2", {"llama3.2:latest": 1.0, "llama3.2": 3.0}, ("llama3.2", 3.0)),
        # a different tag is a different file
        ("llama3.1:8b-instruct-fp16", DEFAULT_MODEL_SIZES, None),
        ("llama3.1", DEFAULT_MODEL_SIZES, None),
    ],
)
def test_lookup_model_size(
    name: str, table: dict[str, float], expected: tuple[str, float] | None
) -> None:
    assert lookup_model_size(name, table) == expected


# --- parameter counts and quantization ----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "billions"),
    [
        ("qwen2.5:7b", 7),
        ("qwen2.5:0.5b", 0.5),
        ("smollm2:135m", 0.135),
        ("mixtral:8x22b", 176),
        ("mixtral:8x7b-instruct-v0.1-q4_0", 56),
        ("llama3.1:70b-instruct-q4_K_M", 70),
        ("qwen2.5:1.5b-instruct-fp16", 1.5),
        ("phi3:3.8b", 3.8),
        ("gemma2:2b", 2),
        ("qwen3:30b-a3b", 30),  # total, not active, parameters must be resident
        ("yarn-mistral:7b-128k", 7),  # "128k" is a context length
        ("hf.co/bartowski/SmolLM2-135M-Instruct-GGUF:Q4_K_M", 0.135),
        ("kimi-k2:1t", 1000),
        ("llama3.2", None),
        ("llama3.2:latest", None),
        ("deepseek-r1:latest", None),
        ("nomic-embed-text", None),
        ("", None),
    ],
)
def test_parse_parameter_count(name: str, billions: float | None) -> None:
    result = parse_parameter_count(name)
    if billions is None:
        assert result is None
    else:
        assert result == pytest.approx(billions)


@pytest.mark.parametrize(
    ("text", "billions"),
    [
        ("3.2B", 3.2),
        ("8.2B", 8.2),
        ("135M", 0.135),
        ("8x22B", 176),
        ("70.6B", 70.6),
        ("", None),
        ("unknown", None),
    ],
)
def test_parse_parameter_size(text: str, billions: float | None) -> None:
    result = parse_parameter_size(text)
    if billions is None:
        assert result is None
    else:
        assert result == pytest.approx(billions)


@pytest.mark.parametrize(
    ("text", "quant"),
    [
        ("Q4_K_M", "q4_K_M"),
        ("q4_k_m", "q4_K_M"),
        ("Q4_0", "q4_0"),
        ("Q4_1", "q4_1"),
        ("Q5_K_M", "q5_K_M"),
        ("Q6_K", "q6_K"),
        ("Q8_0", "q8_0"),
        ("F16", "f16"),
        ("fp16", "f16"),
        ("BF16", "bf16"),
        ("F32", "f32"),
        ("IQ4_XS", "iq4_XS"),
        ("MXFP4", "mxfp4"),
        ("llama3.1:70b-instruct-q4_K_M", "q4_K_M"),
        ("qwen2.5:1.5b-instruct-fp16", "f16"),
        ("llama3.1:8b-instruct-q8_0", "q8_0"),
        ("hf.co/org/Model-GGUF:Q5_K_S", "q5_K_S"),
        ("qwen2.5:7b", None),
        ("llama3.2", None),
        ("qwq:32b", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_quantization(text: str | None, quant: str | None) -> None:
    assert parse_quantization(text) == quant


@pytest.mark.parametrize(
    ("quant", "per_param"),
    [
        ("q4_0", 0.5625),
        ("q4_1", 0.625),
        ("q4_K_M", 0.60),
        ("Q4_K_M", 0.60),
        ("q5_K_M", 0.71),
        ("q6_K", 0.82),
        ("q8_0", 1.0625),
        ("f16", 2.0),
        ("fp16", 2.0),
        ("bf16", 2.0),
        ("f32", 4.0),
        (None, 0.60),  # Ollama's default quantization
        ("something-odd", 0.60),
        ("q3_K_XL", (3 + 0.8) / 8),  # unknown q-type: priced from its bit count
    ],
)
def test_bytes_per_parameter(quant: str | None, per_param: float) -> None:
    assert bytes_per_parameter(quant) == pytest.approx(per_param)


# --- weights --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kwargs", "size", "source"),
    [
        ("llama3.1:8b", {}, 6 * GIB, "table"),
        ("llama3.2:1b", {}, 1 * GIB, "table"),
        ("mixtral:8x22b", {}, 65 * GIB, "table"),
        ("registry.ollama.ai/library/qwen2.5:32b", {}, 20 * GIB, "table"),
        # tags size beats the table
        ("llama3.1:8b", {"tags_size": 4_920_753_328}, 4_920_753_328, "tags"),
        # from the tag: 7e9 parameters x 0.60 bytes (q4_K_M assumed)
        ("qwen2.5:7b", {}, round(7e9 * 0.60), "tag"),
        ("qwen2.5:1.5b-instruct-fp16", {}, round(1.5e9 * 2.0), "tag"),
        ("smollm2:135m", {}, round(0.135e9 * 0.60), "tag"),
        ("mixtral:8x7b", {}, round(56e9 * 0.60), "tag"),
        # explicit quantization (details.quantization_level) beats the default
        ("qwen2.5:7b", {"quantization": "Q8_0"}, round(7e9 * 1.0625), "tag"),
        # /api/show parameter count (raw) beats the tag
        (
            "qwen3:8b",
            {"parameter_count": 8_190_735_360, "quantization": "Q4_K_M"},
            round(8_190_735_360 * 0.60),
            "show",
        ),
        # the same in billions
        ("mystery", {"parameter_count": 3.0}, round(3e9 * 0.60), "show"),
        ("mystery", {}, 0, "unknown"),
        ("mystery", {"default_bytes": 4 * GIB}, 4 * GIB, "unknown"),
        # non-positive tags size is ignored
        ("llama3.1:8b", {"tags_size": 0}, 6 * GIB, "table"),
    ],
)
def test_estimate_model_bytes(name: str, kwargs: dict[str, Any], size: int, source: str) -> None:
    estimate = estimate_model_bytes(name, sizes=DEFAULT_MODEL_SIZES, **kwargs)
    assert estimate.bytes == size
    assert estimate.source == source
    assert estimate.detail


def test_estimate_model_bytes_detail_is_readable() -> None:
    assert estimate_model_bytes("llama3.1:8b", sizes=DEFAULT_MODEL_SIZES).detail == (
        "6.0 GiB from the size table (llama3.1:8b)"
    )
    detail = estimate_model_bytes("qwen2.5:7b", sizes={}).detail
    assert "7B parameters" in detail and "q4_K_M" in detail
    assert not estimate_model_bytes("x", sizes={}).known


def test_user_table_overrides_and_latest_matching() -> None:
    table = {**DEFAULT_MODEL_SIZES, "llama3.1:8b": 7.5, "mymodel": 3}
    assert estimate_model_bytes("llama3.1:8b", sizes=table).bytes == int(7.5 * GIB)
    assert estimate_model_bytes("mymodel:latest", sizes=table).bytes == 3 * GIB


@pytest.mark.parametrize(
    "bad",
    [float("nan"), float("inf"), -float("inf"), -1, -0.5, "6", None, True],
)
def test_validate_model_sizes_rejects_bad_values(bad: object) -> None:
    with pytest.raises(ValueError, match=r"llama3\.1:8b"):
        validate_model_sizes({"llama3.1:8b": bad})


def test_estimate_rejects_bad_table_entry_by_name() -> None:
    with pytest.raises(ValueError, match=r"'qwen2\.5:7b'.*finite"):
        estimate_model_bytes("qwen2.5:7b", sizes={"qwen2.5:7b": float("nan")})


def test_validate_model_sizes_accepts_and_converts() -> None:
    assert validate_model_sizes({"a": 1, "b:latest": 2.5, "c": 0}) == {
        "a": 1.0,
        "b:latest": 2.5,
        "c": 0.0,
    }
    assert validate_model_sizes(DEFAULT_MODEL_SIZES) == DEFAULT_MODEL_SIZES
    with pytest.raises(ValueError):
        validate_model_sizes({"": 1})


# --- architecture ----------------------------------------------------------------------------


def test_arch_info_from_show_reads_model_info() -> None:
    assert LLAMA31_8B == ArchInfo(
        architecture="llama",
        parameter_count=8030261248,
        context_length=131072,
        block_count=32,
        head_count=32,
        head_count_kv=8,
        embedding_length=4096,
        quantization="q4_K_M",
    )
    assert LLAMA31_8B.parameter_billions == pytest.approx(8.03, rel=1e-3)


@pytest.mark.parametrize(
    "show",
    [
        None,
        {},
        {"model_info": None},
        {"model_info": {}},
        {"model_info": []},
        {"model_info": {"general.architecture": 42}},
        {"model_info": {"general.architecture": "llama", "llama.block_count": "lots"}},
    ],
)
def test_arch_info_from_show_is_robust(show: Any) -> None:
    info = ArchInfo.from_show(show)
    assert info.block_count is None
    assert info.parameter_count is None


def test_arch_info_odd_values() -> None:
    info = ArchInfo.from_show(
        {
            "details": {"parameter_size": "8.2B"},
            "model_info": {
                "general.architecture": "qwen3",
                "qwen3.block_count": 36.0,
                "qwen3.context_length": -5,
                "qwen3.attention.head_count": True,
                "qwen3.attention.head_count_kv": [4, 8, 8],
                "qwen3.embedding_length": "4096",
            },
        }
    )
    assert info.parameter_count == 8_200_000_000  # from details.parameter_size
    assert info.block_count == 36
    assert info.context_length is None
    assert info.head_count is None
    assert info.head_count_kv == 8  # the largest per-layer value
    assert info.embedding_length == 4096
    assert info.quantization is None


# --- KV cache --------------------------------------------------------------------------------


def test_kv_cache_llama31_8b_is_128_kib_per_token() -> None:
    # 2 (K,V) x 32 layers x 8 KV heads x 128 head dim x 2 bytes = 131072 bytes per token
    assert estimate_kv_cache_bytes(1, LLAMA31_8B) == 128 * KIB
    assert estimate_kv_cache_bytes(4096, LLAMA31_8B) == 512 * MIB
    assert estimate_kv_cache_bytes(131072, LLAMA31_8B) == 16 * GIB


def test_kv_cache_grows_linearly_with_num_ctx_and_parallel() -> None:
    base = estimate_kv_cache_bytes(2048, LLAMA31_8B)
    for factor in (2, 4, 8, 16):
        assert estimate_kv_cache_bytes(2048 * factor, LLAMA31_8B) == base * factor
    assert estimate_kv_cache_bytes(2048, LLAMA31_8B, parallel=4) == base * 4
    # the heuristic path is linear too
    heuristic = estimate_kv_cache_bytes(1000, None, parameter_count=8)
    assert estimate_kv_cache_bytes(3000, None, parameter_count=8) == heuristic * 3


def test_kv_cache_quantized_cache_types() -> None:
    f16 = estimate_kv_cache_bytes(8192, LLAMA31_8B)
    assert estimate_kv_cache_bytes(8192, LLAMA31_8B, bytes_per_element=1.0625) < f16
    assert estimate_kv_cache_bytes(8192, LLAMA31_8B, bytes_per_element=1.0) == f16 // 2


def test_kv_cache_capped_at_trained_context() -> None:
    small = ArchInfo(
        block_count=32, head_count=32, head_count_kv=8, embedding_length=4096, context_length=8192
    )
    assert estimate_kv_cache_bytes(131072, small) == estimate_kv_cache_bytes(8192, small)


def test_kv_cache_explicit_key_value_lengths() -> None:
    # gemma2-9B style: head dim 256 set explicitly (embedding 3584 / 16 heads would be 224)
    gemma = ArchInfo(
        block_count=42,
        head_count=16,
        head_count_kv=8,
        embedding_length=3584,
        key_length=256,
        value_length=256,
    )
    assert estimate_kv_cache_bytes(1, gemma) == 42 * 8 * (256 + 256) * 2


def test_kv_cache_without_gqa_info_assumes_full_attention() -> None:
    no_kv_heads = ArchInfo(block_count=32, head_count=32, embedding_length=4096)
    assert estimate_kv_cache_bytes(1, no_kv_heads) == 2 * 32 * 4096 * 2
    no_heads = ArchInfo(block_count=32, embedding_length=4096)
    assert estimate_kv_cache_bytes(1, no_heads) == 2 * 32 * 4096 * 2


@pytest.mark.parametrize(
    ("billions", "per_token"),
    [
        (1, 128 * KIB),
        (8, 128 * KIB),
        (7_615_616_512, 128 * KIB),  # a raw count (qwen2.5-7B) is accepted too
        (64, 128 * KIB * 4),  # (64/8)^(2/3) = 4
        (None, 256 * KIB),
    ],
)
def test_kv_cache_heuristic(billions: float | None, per_token: int) -> None:
    assert estimate_kv_cache_bytes(1024, None, parameter_count=billions) == pytest.approx(
        per_token * 1024, rel=1e-9
    )


def test_kv_cache_heuristic_8b_at_128k_is_about_16_gib() -> None:
    # Without /api/show data the heuristic must still give the 8B reference figure.
    assert estimate_kv_cache_bytes(131072, None, parameter_count=8) == 16 * GIB
    # and from ArchInfo that only has a parameter count
    assert estimate_kv_cache_bytes(131072, ArchInfo(parameter_count=8_000_000_000)) == 16 * GIB


def test_kv_cache_heuristic_is_not_below_real_large_models() -> None:
    # llama-3.1-70B: 80 layers x 8 KV heads x 128 -> 320 KiB/token; qwen2.5-32B: 64 layers -> 256
    assert estimate_kv_cache_bytes(1, None, parameter_count=70) >= 320 * KIB
    assert estimate_kv_cache_bytes(1, None, parameter_count=32) >= 256 * KIB


def test_kv_cache_non_positive_num_ctx_means_default() -> None:
    assert estimate_kv_cache_bytes(0, LLAMA31_8B) == estimate_kv_cache_bytes(
        DEFAULT_NUM_CTX, LLAMA31_8B
    )


# --- whole request ---------------------------------------------------------------------------


def test_request_footprint_llama31_8b() -> None:
    weights = estimate_model_bytes("llama3.1:8b", sizes={}, tags_size=4_920_753_328)
    footprint = estimate_request_bytes(weights, num_ctx=4096, arch=LLAMA31_8B)
    assert footprint.weights_bytes == 4_920_753_328
    assert footprint.kv_cache_bytes == 512 * MIB
    assert footprint.overhead_bytes == 256 * MIB + round(4_920_753_328 * 0.05)
    assert footprint.total_bytes == (
        footprint.weights_bytes + footprint.kv_cache_bytes + footprint.overhead_bytes
    )
    assert footprint.describe() == (
        "weights 4.6 GiB + KV cache 512.0 MiB (num_ctx 4096) + overhead 490.6 MiB = 5.6 GiB"
    )


def test_request_footprint_parallel_and_describe() -> None:
    weights = SizeEstimate(6 * GIB, "table", "6.0 GiB from the size table")
    footprint = estimate_request_bytes(weights, num_ctx=8192, arch=LLAMA31_8B, parallel=2)
    assert footprint.kv_cache_bytes == 2 * GIB
    assert "(num_ctx 8192 x 2 parallel)" in footprint.describe()


def test_request_footprint_infers_count_from_weights_for_kv() -> None:
    # 4.8 GB at q4_K_M density ~ 8B parameters -> the 128 KiB/token reference
    weights = SizeEstimate(4_800_000_000, "tags", "")
    footprint = estimate_request_bytes(weights, num_ctx=4096)
    assert footprint.kv_cache_bytes == 512 * MIB


def test_request_footprint_unknown_weights() -> None:
    footprint = estimate_request_bytes(SizeEstimate(0, "unknown", ""), num_ctx=4096)
    assert footprint.weights_bytes == 0
    assert footprint.kv_cache_bytes == 4096 * 256 * KIB
    assert footprint.overhead_bytes == 256 * MIB
    assert isinstance(footprint, RequestFootprint)


def test_overhead_rule() -> None:
    assert estimate_overhead_bytes(0) == 256 * MIB
    assert estimate_overhead_bytes(40 * GIB) == 256 * MIB + 2 * GIB


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (6 * GIB, "6.0 GiB"),
        (512 * MIB, "512.0 MiB"),
        (1536 * KIB, "1.5 MiB"),
        (2 * KIB, "2.0 KiB"),
        (900, "900 B"),
        (0, "0 B"),
        (3 * 1024**4, "3.0 TiB"),
        (-2 * GIB, "-2.0 GiB"),
    ],
)
def test_format_bytes(n: int, text: str) -> None:
    assert format_bytes(n) == text


def test_default_table_is_valid_and_in_gib() -> None:
    assert validate_model_sizes(DEFAULT_MODEL_SIZES) == DEFAULT_MODEL_SIZES
    assert all(math.isfinite(v) and v > 0 for v in DEFAULT_MODEL_SIZES.values())
    assert GIB == 1024**3


def test_show_data_feeds_the_weight_estimate_as_the_router_uses_it() -> None:
    show = {
        "details": {"parameter_size": "1.5B", "quantization_level": "F16"},
        "model_info": {"general.architecture": "qwen2", "general.parameter_count": 1_543_714_304},
    }
    arch = ArchInfo.from_show(show)
    assert arch.quantization == "f16"
    estimate = estimate_model_bytes(
        "my-finetune",
        sizes=DEFAULT_MODEL_SIZES,
        parameter_count=arch.parameter_count,  # raw count, straight from /api/show
        quantization=arch.quantization,
    )
    assert estimate.source == "show"
    assert estimate.bytes == round(1_543_714_304 * 2.0)
