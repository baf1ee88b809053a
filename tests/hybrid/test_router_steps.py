"""The router's steps before a plan, each doing one thing, over real HTTP.

``prepare(model)`` may start probes but never waits; ``wait_for_evidence()`` is the one
wait; ``plan()`` does no I/O at all. ``request_probe(name)`` starts or joins the one probe of
a backend (what the embeddings' digest check uses)."""

from __future__ import annotations

import pytest

from langchain_contextharbor import BackendConfig, Timeouts
from langchain_contextharbor._background import final_chunk
from langchain_contextharbor._router import Router
from langchain_contextharbor._settings import RouterSettings
from langchain_contextharbor.routing import RoutePolicy
from langchain_contextharbor.sizing import DEFAULT_MODEL_SIZES
from langchain_contextharbor.testing import Fault, OllamaStandIn

MODEL = "llama3.2:1b"
POLICY = RoutePolicy(size_threshold_bytes=8 * 1024**3)


def backends_for(gpu: OllamaStandIn, cpu: OllamaStandIn) -> list[BackendConfig]:
    t = Timeouts(connect=10.0, first_token=30.0, idle=30.0, probe=10.0)
    return [
        BackendConfig(name="gpu", base_url=gpu.url, kind="gpu", timeouts=t),
        BackendConfig(name="cpu", base_url=cpu.url, kind="cpu", timeouts=t),
    ]


def _plan(r: Router) -> list[str]:
    return r.plan(MODEL, num_ctx=2048, sizes=DEFAULT_MODEL_SIZES, policy=POLICY).backends


def test_plan_sends_nothing_prepare_starts_probes_and_the_wait_takes_them_in(
    pair: tuple[OllamaStandIn, OllamaStandIn],
) -> None:
    gpu, cpu = pair
    r = Router(backends_for(gpu, cpu), RouterSettings(first_probe_wait=30.0))
    try:
        plan = r.plan(MODEL, num_ctx=2048, sizes=DEFAULT_MODEL_SIZES, policy=POLICY)
        # A fresh router's plan: nothing known yet, nothing sent, nothing started.
        assert all(c.backend in {"gpu", "cpu"} for c in plan.candidates)
        assert gpu.requests == [] and cpu.requests == []
        assert all(b.probe is None and b.probe_future is None for b in r.backends)
        r.prepare(MODEL)
        assert all(b.probe_future is not None or b.probe is not None for b in r.backends)
        r.wait_for_evidence()  # first probes: returns as soon as they are in
        assert all(b.probe is not None and b.probe.ok for b in r.backends)
        assert gpu.requests_to("/api/version") and cpu.requests_to("/api/version")
        assert _plan(r) == ["gpu", "cpu"]
    finally:
        r.close()


def test_request_probe_starts_or_joins_the_one_probe_of_a_backend(
    pair: tuple[OllamaStandIn, OllamaStandIn],
) -> None:
    gpu, cpu = pair
    r = Router(backends_for(gpu, cpu), RouterSettings(background_probes=False))
    try:
        gpu.inject(Fault.ACCEPT_HANG)
        first = r.request_probe("gpu")
        assert r.request_probe("gpu") is first  # joined, not a second probe
        assert not first.done()
        gpu.clear_faults()  # the hung probe resumes and is answered
        assert first.result(timeout=30).ok
        assert r.get("gpu").probe is first.result()
        assert r.request_probe("gpu") is not first  # done: the next one is a new probe
        with pytest.raises(KeyError, match="no backend named 'nope'"):
            r.request_probe("nope")
    finally:
        r.close()


def test_settings_configure_the_router_and_settings_are_its_only_configuration() -> None:
    cfgs = [BackendConfig(name="gpu", base_url="http://127.0.0.1:9")]
    r = Router(cfgs, RouterSettings(probe_ttl=3.0, background_trials=False))
    assert (r.probe_ttl, r.background_trials) == (3.0, False)
    with pytest.raises(TypeError, match="unexpected keyword"):
        Router(cfgs, probe_ttl=4.0)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("lines", "error"),
    [
        (['{"done": false}', "", '{"done": true, "eval_count": 3}'], None),
        (['{"done": false}'], "without a final chunk"),
        (['{"error": "boom"}'], "boom"),
        (["[1]"], "malformed"),
        (['{"done": false}'] * 5, "within 4 chunks"),
    ],
)
def test_the_calibration_stream_reader_is_bounded(lines: list[str], error: str | None) -> None:
    if error is None:
        assert final_chunk(iter(lines), limit=4)["eval_count"] == 3
    else:
        with pytest.raises((ValueError, RuntimeError), match=error):
            final_chunk(iter(lines), limit=4)
