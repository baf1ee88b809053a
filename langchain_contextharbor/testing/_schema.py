"""Produce a valid instance of a JSON schema, steered by the words of a prompt.

The scripted engine needs this twice: tool-call arguments must validate against the tool's
``parameters`` schema, and a ``format`` schema must be answered with a conforming object.
Values are taken from the prompt where that is cheap and unambiguous (numbers for numeric
fields, quoted or capitalised phrases for strings, a mentioned enum member), which is what
langchain-tests' tool-calling tests expect of a cooperative model (``magic_function(3)`` ->
``{"input": 3}``), and fall back to deterministic placeholders otherwise.

Only the JSON-schema subset that tool and structured-output schemas use in practice is
handled: ``type`` (string or list), ``properties``/``required``, ``items``, ``enum``,
``const``, ``anyOf``/``oneOf``/``allOf``, local ``$ref`` into ``$defs``/``definitions``,
numeric bounds and string/array lengths. A property with a ``default`` gets that default.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from typing import Any

__all__ = ["PromptHints", "instance_for"]

_STOPWORDS = frozenset(
    "a an the is are was were be of to in on at for with and or what which who how why when "
    "where use using tool please me my your you i it this that value give tell make create "
    "call named about".split()
)


class PromptHints:
    """Values mined from a prompt, handed out in order as the schema walk asks for them."""

    def __init__(self, text: str, *, strings: bool = True) -> None:
        self.text = text
        self._numbers = [
            m.group(0) for m in re.finditer(r"(?<![\w.])-?\d+(?:\.\d+)?(?!\w|\.\d)", text)
        ]
        self._strings = list(_string_candidates(text)) if strings else []
        self._n = 0
        self._s = 0

    def number(self) -> str | None:
        """Next number literal of the prompt, or ``None`` when they are used up."""
        if self._n < len(self._numbers):
            self._n += 1
            return self._numbers[self._n - 1]
        return None

    def string(self) -> str | None:
        """Next string candidate of the prompt, or ``None`` when they are used up."""
        if self._s < len(self._strings):
            self._s += 1
            return self._strings[self._s - 1]
        return None

    def mentions(self, word: str) -> bool:
        """Whether ``word`` occurs in the prompt (case-insensitive, whole word)."""
        return re.search(rf"(?<!\w){re.escape(word)}(?!\w)", self.text, re.IGNORECASE) is not None


def _string_candidates(text: str) -> Iterator[str]:
    """Quoted phrases, then capitalised runs not at a sentence start, then content words."""
    seen: set[str] = set()
    for m in re.finditer(r"'([^'\n]{1,80})'|\"([^\"\n]{1,80})\"", text):
        val = (m.group(1) or m.group(2)).strip()
        if val and val not in seen:
            seen.add(val)
            yield val
    for m in re.finditer(r"(?<![.!?]\s)(?<!^)\b([A-Z][\w-]*(?:\s+[A-Z][\w-]*)*)", text):
        val = m.group(1)
        if val.lower() not in _STOPWORDS and val not in seen:
            seen.add(val)
            yield val
    words = [w for w in re.findall(r"[^\W\d_][\w-]*", text) if w.lower() not in _STOPWORDS]
    for w in reversed(words):
        if w not in seen:
            seen.add(w)
            yield w


def _resolve(schema: Any, root: dict[str, Any]) -> dict[str, Any]:
    seen = 0
    while isinstance(schema, dict) and "$ref" in schema and seen < 32:
        ref = str(schema["$ref"])
        target: Any = root
        if ref.startswith("#"):
            for part in ref.lstrip("#/").split("/"):
                if not part:
                    continue
                part = part.replace("~1", "/").replace("~0", "~")
                target = target.get(part, {}) if isinstance(target, dict) else {}
        else:
            target = {}
        merged = {k: v for k, v in schema.items() if k != "$ref"}
        schema = {**target, **merged} if isinstance(target, dict) else merged
        seen += 1
    return schema if isinstance(schema, dict) else {}


def _pick_type(schema: dict[str, Any]) -> str | None:
    t = schema.get("type")
    if isinstance(t, list):
        non_null = [x for x in t if x != "null"]
        return str(non_null[0]) if non_null else "null"
    if isinstance(t, str):
        return t
    if "properties" in schema:
        return "object"
    if "items" in schema:
        return "array"
    return None


def _number(schema: dict[str, Any], hints: PromptHints, *, integer: bool) -> int | float:
    raw = hints.number()
    value: float = float(raw) if raw is not None else 0.0
    lo = schema.get("minimum")
    hi = schema.get("maximum")
    xlo = schema.get("exclusiveMinimum")
    xhi = schema.get("exclusiveMaximum")
    step = 1.0 if integer else 0.5
    if isinstance(lo, (int, float)) and value < lo:
        value = float(lo)
    if isinstance(xlo, (int, float)) and not isinstance(xlo, bool) and value <= xlo:
        value = float(xlo) + step
    if isinstance(hi, (int, float)) and value > hi:
        value = float(hi)
    if isinstance(xhi, (int, float)) and not isinstance(xhi, bool) and value >= xhi:
        value = float(xhi) - step
    if integer:
        return int(value)
    return int(value) if value.is_integer() and raw is not None and "." not in raw else value


def _string(name: str, schema: dict[str, Any], hints: PromptHints, label: str) -> str:
    fmt = schema.get("format")
    fixed = {
        "date-time": "2025-01-01T00:00:00Z",
        "date": "2025-01-01",
        "time": "00:00:00",
        "email": "user@example.com",
        "uri": "https://example.com/",
        "url": "https://example.com/",
        "uuid": "00000000-0000-4000-8000-000000000000",
    }
    if isinstance(fmt, str) and fmt in fixed:
        return fixed[fmt]
    value = hints.string()
    if value is None:
        value = f"{name or 'value'} {label}".strip() if label else (name or "value")
    min_len = schema.get("minLength")
    max_len = schema.get("maxLength")
    if isinstance(min_len, int) and len(value) < min_len:
        value = value + "x" * (min_len - len(value))
    if isinstance(max_len, int) and len(value) > max_len:
        value = value[:max_len]
    return value


def instance_for(
    schema: Any,
    hints: PromptHints,
    *,
    name: str = "",
    label: str = "",
    optional: bool = True,
    root: dict[str, Any] | None = None,
    depth: int = 0,
) -> Any:
    """Return a value valid for ``schema``; ``name`` is the property being filled.

    ``label`` is appended to placeholder strings (the stand-in passes "from <instance>" so a
    structured answer still says which server produced it). ``optional=False`` leaves out
    properties that an object schema's ``required`` list does not name, as a model calling a
    tool omits arguments it has no value for.
    """
    if root is None:
        root = schema if isinstance(schema, dict) else {}
    s = _resolve(schema, root)
    if depth > 12:
        return None
    if "const" in s:
        return s["const"]
    if "default" in s and depth > 0:
        # A cooperative model leaves defaulted fields at their default (unit="celsius").
        return copy.deepcopy(s["default"])
    enum = s.get("enum")
    if isinstance(enum, list) and enum:
        for member in enum:
            if isinstance(member, str) and hints.mentions(member):
                return member
        return enum[0]
    for key in ("anyOf", "oneOf"):
        options = s.get(key)
        if isinstance(options, list) and options:
            resolved = [_resolve(o, root) for o in options]
            chosen = next((o for o in resolved if _pick_type(o) != "null"), resolved[0])
            return instance_for(
                chosen, hints, name=name, label=label, optional=optional, root=root, depth=depth + 1
            )
    all_of = s.get("allOf")
    if isinstance(all_of, list) and all_of:
        merged: dict[str, Any] = {k: v for k, v in s.items() if k != "allOf"}
        for part in all_of:
            part_s = _resolve(part, root)
            props = {**merged.get("properties", {}), **part_s.get("properties", {})}
            req = [*merged.get("required", []), *part_s.get("required", [])]
            merged = {**merged, **part_s, "properties": props, "required": req}
        return instance_for(
            merged, hints, name=name, label=label, optional=optional, root=root, depth=depth + 1
        )

    kind = _pick_type(s)
    if kind == "object" or (kind is None and "properties" in s):
        props = s.get("properties") or {}
        out: dict[str, Any] = {}
        required = s.get("required")
        if isinstance(props, dict):
            for prop_name, prop_schema in props.items():
                if not optional and isinstance(required, list) and prop_name not in required:
                    continue
                out[str(prop_name)] = instance_for(
                    prop_schema,
                    hints,
                    name=str(prop_name),
                    label=label,
                    optional=optional,
                    root=root,
                    depth=depth + 1,
                )
        for req in s.get("required", []) or []:
            if req not in out:
                out[str(req)] = f"{req} {label}".strip()
        return out
    if kind == "array":
        items = s.get("items", {})
        count = s.get("minItems") if isinstance(s.get("minItems"), int) else 1
        count = max(int(count or 0), 1)
        max_items = s.get("maxItems")
        if isinstance(max_items, int):
            count = min(count, max_items)
        return [
            instance_for(
                items, hints, name=name, label=label, optional=optional, root=root, depth=depth + 1
            )
            for _ in range(count)
        ]
    if kind == "integer":
        return _number(s, hints, integer=True)
    if kind == "number":
        return _number(s, hints, integer=False)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    if kind == "string" or kind is None:
        return _string(name, s, hints, label)
    return None
