"""The models' fields reach their router as one RouterSettings, and bad values are refused
under the name the user wrote (``_config.RoutedFields`` for the chat model and embeddings)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from langchain_contextharbor import (
    BackendConfig,
    ConfigurationError,
    HybridChatOllama,
    HybridOllamaEmbeddings,
)
from langchain_contextharbor.breaker import BreakerPolicy

BACKENDS = [
    BackendConfig(name="gpu", base_url="http://127.0.0.1:9"),
    BackendConfig(name="cpu", kind="cpu", base_url="http://127.0.0.1:10"),
]


def test_the_chat_models_fields_reach_its_router() -> None:
    policy = BreakerPolicy(cooldown=7.0)
    llm = HybridChatOllama(
        model="m",
        backends=BACKENDS,
        background_probes=False,
        breaker=policy,
        probe_ttl=3.0,
        oom_cooldown=4.0,
        first_probe_wait=0.0,
        warm_first_token_timeout=None,
        background_trials=False,
        calibrate_speeds=False,
    )
    r = llm.router
    assert (r.probe_ttl, r.oom_cooldown, r.first_probe_wait) == (3.0, 4.0, 0.0)
    assert r.warm_first_token is None and not r.background_trials and not r.calibrate_speeds
    assert not r.background_probes and r.get("gpu").breaker.policy == policy
    llm.close()


def test_the_embeddings_fields_reach_their_own_router() -> None:
    emb = HybridOllamaEmbeddings(
        model="e", backends=BACKENDS, background_probes=False, probe_ttl=2.5, timeout=9.0
    )
    r = emb.shared_router
    assert r.probe_ttl == 2.5 and not r.background_probes
    assert all(c.timeouts.first_token == 9.0 for c in emb.backend_configs)
    emb.close()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"warm_first_token_timeout": -1}, "warm_first_token_timeout must be > 0 seconds or None"),
        ({"first_probe_wait": math.nan}, "first_probe_wait must be >= 0 seconds"),
        ({"probe_ttl": 0}, "probe_ttl must be > 0 seconds"),
        ({"oom_cooldown": -1}, "oom_cooldown must be >= 0 seconds"),
        ({"timeout": math.inf}, "timeout must be > 0 seconds"),
        ({"size_threshold_gb": 0}, "size_threshold_gb must be a finite number > 0"),
    ],
)
def test_a_bad_setting_is_named_as_the_user_wrote_it(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        HybridChatOllama(model="m", backends=BACKENDS, background_probes=False, **kwargs)


def test_embeddings_check_their_settings_also_with_a_shared_router() -> None:
    llm = HybridChatOllama(model="m", backends=BACKENDS, background_probes=False)
    for bad in ({"probe_ttl": -1.0}, {"timeout": 0}):
        with pytest.raises(ConfigurationError, match="must be > 0 seconds"):
            HybridOllamaEmbeddings.from_chat_model(llm, model="e", **bad)
    with pytest.raises(ConfigurationError, match=r"base_url cannot be combined with \['router'\]"):
        HybridOllamaEmbeddings.from_chat_model(llm, model="e", base_url="http://127.0.0.1:11")
    llm.close()


def test_a_validation_error_is_one_configuration_error_that_hides_the_input() -> None:
    with pytest.raises(ConfigurationError) as info:
        HybridOllamaEmbeddings(model="e", backends=BACKENDS, batch_size="sekrit-value")  # type: ignore[arg-type]
    text = str(info.value)
    assert text.startswith("invalid HybridOllamaEmbeddings configuration: batch_size: ")
    assert "sekrit" not in text
