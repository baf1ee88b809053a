"""ollama-js, the official JavaScript client, against the stand-in.

``js/driver.mjs`` runs every case in one node process per stand-in and prints what each
returned (or raised) as JSON; the tests here assert on it. node and the pinned ``ollama``
package (``js/package.json``, installed by ``scripts/ci_system_deps.sh`` with ``npm ci``)
are required in CI (``CI=true``: missing means failed) and skipped with the reason elsewhere.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from fidelitykit import CAPITAL_SCHEMA, Target, missing_requirement

JS_DIR = Path(__file__).parent / "js"
CASES = ("chat", "stream", "tools", "format", "embed", "tags", "ps", "show", "missing")


@pytest.fixture(scope="module")
def js(target: Target) -> dict[str, Any]:
    """Every case's outcome through ollama-js, keyed by case name."""
    node = shutil.which("node")
    if node is None:
        missing_requirement("node is not installed")
    if not (JS_DIR / "node_modules" / "ollama" / "package.json").is_file():
        missing_requirement(f"ollama-js is not installed: run `npm ci` in {JS_DIR}")
    proc = subprocess.run(
        [node, "driver.mjs", target.url, target.chat_model, target.embed_model, ",".join(CASES)],
        cwd=JS_DIR,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


def _value(js: dict[str, Any], case: str) -> Any:
    result = js[case]
    assert result["ok"], result
    return result["value"]


def test_chat(target: Target, js: dict[str, Any]) -> None:
    resp = _value(js, "chat")
    assert resp["done"] and resp["done_reason"] in ("stop", "length")
    assert resp["message"]["role"] == "assistant" and resp["message"]["content"]
    assert resp["model"] == target.chat_model and resp["eval_count"] > 0


def test_stream(js: dict[str, Any]) -> None:
    parts = _value(js, "stream")
    assert len(parts) > 2 and parts[-1]["done"] and not any(p["done"] for p in parts[:-1])
    assert "".join(p["message"]["content"] for p in parts)


def test_tools(target: Target, js: dict[str, Any]) -> None:
    if not target.tools:
        result = js["tools"]
        assert not result["ok"] and result["status_code"] == 400, result
        assert result["error"].endswith(f"{target.chat_model} does not support tools")
        return
    calls = _value(js, "tools")["message"]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["get_weather"]
    assert isinstance(calls[0]["function"]["arguments"], dict)
    assert "city" in calls[0]["function"]["arguments"]


def test_structured_output(js: dict[str, Any]) -> None:
    content = _value(js, "format")["message"]["content"]
    jsonschema.validate(json.loads(content), CAPITAL_SCHEMA)


def test_embed(target: Target, js: dict[str, Any]) -> None:
    vectors = _value(js, "embed")["embeddings"]
    assert [len(v) for v in vectors] == [target.dims, target.dims]
    assert all(math.isclose(math.hypot(*v), 1.0, rel_tol=1e-5) for v in vectors)


def test_tags_ps_show(target: Target, js: dict[str, Any]) -> None:
    assert target.chat_model in {m["model"] for m in _value(js, "tags")["models"]}
    loaded = {m["model"]: m for m in _value(js, "ps")["models"]}  # after the chat cases
    assert loaded[target.chat_model]["context_length"] == 4096
    assert "T" in loaded[target.chat_model]["expires_at"]
    show = _value(js, "show")
    assert "completion" in show["capabilities"]
    info = show["model_info"]
    assert f"{info['general.architecture']}.context_length" in info


def test_missing_model_is_a_404(js: dict[str, Any]) -> None:
    result = js["missing"]
    assert not result["ok"] and result["name"] == "ResponseError", result
    assert (result["status_code"], result["error"]) == (404, "model 'no-such-model' not found")
