"""What the hot path caches per state must follow every change of that state.

The chat model caches its identifying parameters (langchain-core asks for them on every
call) and the router checks a repeated plan against the last one without rebuilding the
cache key; these tests change each input and expect the cached answer to change too."""

from __future__ import annotations

from langchain_contextharbor import BackendConfig, HybridChatOllama
from langchain_contextharbor.routing import RoutePolicy


def _llm(**kw: object) -> HybridChatOllama:
    return HybridChatOllama(
        model="llama3.2:1b",
        backends=[
            BackendConfig(name="gpu", base_url="http://127.0.0.1:9"),
            BackendConfig(name="cpu", kind="cpu", base_url="http://127.0.0.1:10"),
        ],
        background_probes=False,
        **kw,  # type: ignore[arg-type]
    )


def test_identifying_params_follow_set_parameters_and_copies() -> None:
    llm = _llm(temperature=0.1)
    first = llm._identifying_params
    assert first["temperature"] == 0.1 and first["model"] == "llama3.2:1b"
    first["backends"].append("mutated by a caller")
    assert llm._identifying_params["backends"] == [
        "gpu=http://127.0.0.1:9",
        "cpu=http://127.0.0.1:10",
    ]
    llm.temperature = 0.7
    llm.model = "qwen3:4b"
    params = llm._identifying_params
    assert params["temperature"] == 0.7 and params["model"] == "qwen3:4b"
    copy = llm.model_copy(update={"num_ctx": 4096})
    assert copy._identifying_params["num_ctx"] == 4096
    assert "num_ctx" not in llm._identifying_params


def test_repeated_plan_follows_sizes_policy_and_in_flight() -> None:
    llm = _llm()
    router = llm.router
    sizes = dict(llm.model_sizes)
    policy = RoutePolicy(size_threshold_bytes=8 * 1024**3)
    plan = router.plan("my-model", num_ctx=2048, sizes=sizes, policy=policy)
    assert router.plan("my-model", num_ctx=2048, sizes=sizes, policy=policy) is plan
    sizes["my-model"] = 30.0  # above the threshold: CPU first
    big = router.plan("my-model", num_ctx=2048, sizes=sizes, policy=policy)
    assert big.backends == ["cpu", "gpu"] and plan.backends == ["gpu", "cpu"]
    small = RoutePolicy(size_threshold_bytes=64 * 1024**3)  # a bigger threshold: GPU first
    p_small = router.plan("my-model", num_ctx=2048, sizes=sizes, policy=small)
    assert p_small.backends == ["gpu", "cpu"]
    assert router.plan("my-model", num_ctx=2048, sizes=sizes, policy=small) is p_small
    assert router.acquire("gpu")
    try:  # a call in flight is part of the plan's key: planned again
        assert router.plan("my-model", num_ctx=2048, sizes=sizes, policy=small) is not p_small
    finally:
        router.release("gpu")
    assert router.plan("my-model", num_ctx=2048, sizes=sizes, policy=small) is p_small
