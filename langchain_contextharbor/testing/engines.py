"""What generates the tokens behind a stand-in: the engine protocol and the scripted engine.

The HTTP server owns everything Ollama-specific (validation, loading, queueing, stop
sequences, ``num_predict``, NDJSON framing, faults); an engine only turns a ``ChatTurn`` into
a stream of events. That split lets the same server run a deterministic scripted engine for
protocol tests and a real llama.cpp model (``LlamaCppEngine``) for end-to-end ones.

``ScriptedEngine`` answers so that tests can tell *which* instance served a request
("Hello from gpu (llama3.2:1b). You said: ..."), streams word-sized tokens so a stream has
several chunks, calls a bound tool with schema-valid arguments mined from the prompt, and
answers ``format`` requests with valid JSON - enough for langchain-tests' standard
integration suite to pass against plain ``ChatOllama``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from langchain_contextharbor.testing._schema import PromptHints, instance_for
from langchain_contextharbor.testing.models import StandInModel

__all__ = [
    "ChatTurn",
    "DoneEvent",
    "EmbeddingNotSupported",
    "Engine",
    "EngineEvent",
    "ScriptedEngine",
    "TextToken",
    "ThinkingToken",
    "ToolCallEvent",
    "ToolDecision",
    "count_words",
    "embed_text",
    "embedding_features",
    "normalize",
    "split_tokens",
]


@dataclass(frozen=True)
class ChatTurn:
    """Everything an engine needs to answer one ``/api/chat`` request.

    ``model`` is the request string (echoed on the wire), ``spec`` the resolved model.
    ``think`` is already resolved by the server: ``True``/a level string when the model should
    think, ``False``/``None`` when not. ``format`` is ``None``, ``"json"`` or a schema dict.
    """

    model: str
    spec: StandInModel
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] = field(default_factory=list)
    format: str | dict[str, Any] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    think: bool | str | None = None
    instance: str = "ollama"

    @property
    def last_user_text(self) -> str:
        """Content of the last ``user`` message ("" if there is none)."""
        for msg in reversed(self.messages):
            if msg.get("role") == "user":
                return _content_text(msg.get("content"))
        return ""

    @property
    def last_message(self) -> dict[str, Any]:
        """The final message of the conversation (``{}`` if none)."""
        return self.messages[-1] if self.messages else {}


@dataclass(frozen=True)
class TextToken:
    """A piece of answer text (one NDJSON chunk before stop-sequence processing)."""

    text: str


@dataclass(frozen=True)
class ThinkingToken:
    """A piece of reasoning text (``message.thinking``)."""

    text: str


@dataclass(frozen=True)
class ToolCallEvent:
    """A complete tool call; ``arguments`` is an object, never a string (as in Ollama)."""

    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class DoneEvent:
    """End of generation. Counts left ``None`` are filled in by the server."""

    done_reason: str = "stop"
    prompt_eval_count: int | None = None
    eval_count: int | None = None


EngineEvent = TextToken | ThinkingToken | ToolCallEvent | DoneEvent


@runtime_checkable
class Engine(Protocol):
    """Generates the events of one chat turn. Called from server threads, possibly at once."""

    def chat(self, turn: ChatTurn) -> Iterator[EngineEvent]:
        """Yield tokens / tool calls, optionally ending with a ``DoneEvent``."""
        ...


@dataclass(frozen=True)
class ToolDecision:
    """A custom tool policy's answer: call ``name`` with ``arguments`` (``None`` = derive)."""

    name: str
    arguments: dict[str, Any] | None = None


ToolPolicy = Literal["auto", "first", "never"] | Callable[[ChatTurn], ToolDecision | None]


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(p.get("text", "")) if isinstance(p, dict) else str(p) for p in content
        ).strip()
    return "" if content is None else str(content)


def split_tokens(text: str) -> list[str]:
    """Split text into word-level tokens that concatenate back to ``text`` exactly."""
    return re.findall(r"\s*\S+|\s+$", text) or ([text] if text else [])


def count_words(messages: Sequence[dict[str, Any]]) -> int:
    """Rough prompt size: words of all message contents (at least 1)."""
    return max(1, sum(len(_content_text(m.get("content")).split()) for m in messages))


# Words too frequent to say what a text is about; they are left out of the features.
_EMBED_STOPWORDS = frozenset(
    "a an and are as at be by can do does for from has have how i in is it its of on or "
    "that the their this to was were what when where which who why will with you your".split()
)


class EmbeddingNotSupported(Exception):
    """Raised by an engine asked to embed with a model that cannot (Ollama's 501)."""


def embedding_features(text: str) -> list[tuple[str, float]]:
    """The weighted features the scripted embedding hashes: what "similar" means for it.

    Each lower-cased word that is not a stop word counts 1.0, and each character trigram of
    that word (with ``<``/``>`` marking its ends) counts 0.25. Two texts are near when they
    share words, a little nearer when they share word pieces ("cat"/"cats"), and unrelated
    (cosine ~0) when they share neither ("kitten"/"young cat": no synonyms here).
    """
    out: list[tuple[str, float]] = []
    for word in re.findall(r"\w+", text.lower()):
        if word in _EMBED_STOPWORDS:
            continue
        out.append(("w:" + word, 1.0))
        padded = f"<{word}>"
        out.extend(("c:" + padded[i : i + 3], 0.25) for i in range(len(padded) - 2))
    return out


def _bands(dim: int) -> list[tuple[int, int, float]]:
    """``(start, size, scale)`` of the nested bands of a ``dim``-long scripted vector:
    ``[0, 1)``, ``[1, 2)``, ``[2, 4)``, ``[4, 8)``, ... up to ``dim``; ``scale`` is
    sqrt(size/dim), so each band weighs its share and the whole behaves as one hash."""
    bounds = [0]
    edge = 1
    while edge < dim:
        bounds.append(edge)
        edge *= 2
    bounds.append(dim)
    return [(a, b - a, math.sqrt((b - a) / dim)) for a, b in itertools.pairwise(bounds)]


def embed_text(digest: str, text: str, dimensions: int) -> list[float]:
    """Deterministic, L2-normalised scripted embedding of ``text`` by the build ``digest``.

    Feature hashing: every feature of :func:`embedding_features` adds its weight, with a
    hashed sign, to one hashed slot of each nested band (``[0, 1)``, ``[1, 2)``, ``[2, 4)``,
    ... up to ``dimensions``), scaled by the square root of the band's share
    of the vector (and jittered by under 1%, so that no prefix cancels out exactly); the
    hash is salted with the model's digest. So the cosine of two vectors
    of one build approximates the weighted overlap of the two texts' features (with the
    collision noise of one hash over all the slots), and two builds (digests) of the same
    model put the same text in unrelated directions, like two real models that do not share
    a vector space. The bands make every prefix an embedding of its own, as in the
    Matryoshka-trained models ``dimensions`` is meant for: Ollama cuts a vector to
    ``dimensions`` and normalises it again, and a prefix of a vector hashed into one slot
    per feature would mostly be zeros. A text with no features (empty, only stop words)
    gets a fixed direction of its own.
    """
    dim = max(1, dimensions)
    vec = [0.0] * dim
    salt = digest.encode()[:64]
    bands = _bands(dim)
    for feature, weight in embedding_features(text) or [("<no features>", 1.0)]:
        h = hashlib.blake2b(feature.encode(), key=salt, digest_size=64).digest()
        # a jitter under 1% so that features never cancel exactly in a short prefix
        weight *= 1.0 + int.from_bytes(h[62:], "big") / 6_553_600
        for i, (start, size, scale) in enumerate(bands):
            word = int.from_bytes(h[(4 * i) % 64 : (4 * i) % 64 + 4], "big")
            if i >= 16:  # more than 16 bands (dim > 256k): mix the band into the reuse
                word = (word * 2654435761 + i) & 0xFFFFFFFF
            slot = start + (word & 0x7FFFFFFF) % size
            vec[slot] += -weight * scale if word >> 31 else weight * scale
    norm = math.sqrt(sum(v * v for v in vec))
    if norm == 0.0:  # features cancelled out exactly: fall back to one fixed slot
        vec[0], norm = 1.0, 1.0
    return [v / norm for v in vec]


def normalize(vec: Sequence[float]) -> list[float]:
    """``vec`` scaled to length 1 (Ollama L2-normalises every vector it returns)."""
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [v / norm for v in vec]


def _name_words(name: str) -> set[str]:
    spaced = re.sub(r"([a-z])([A-Z])", r"\1 \2", name)
    return {w.lower() for w in re.split(r"[\W_]+", spaced) if len(w) > 2}


def _tool_function(tool: dict[str, Any]) -> dict[str, Any]:
    fn = tool.get("function", tool)
    return fn if isinstance(fn, dict) else {}


# Words too common in tool names to show that a question is about that tool.
_GENERIC_NAME_WORDS = frozenset(
    {"get", "set", "run", "make", "tool", "tools", "function", "call", "the", "and", "for", "with"}
)
_ASKS_FOR_TOOL = re.compile(r"\btools?\b", re.IGNORECASE)


def _tool_score(tool: dict[str, Any], text: str, words: set[str]) -> int:
    """How strongly ``text`` points at ``tool``: 0 = not at all."""
    name = str(_tool_function(tool).get("name", ""))
    if not name:
        return 0
    if name.lower() in text.lower():
        return 1000 + len(name)
    return len((_name_words(name) - _GENERIC_NAME_WORDS) & words)


def _best_tool(tools: Sequence[dict[str, Any]], text: str) -> dict[str, Any] | None:
    """The tool the question calls for, or ``None`` when it calls for none.

    A question calls for a tool when it names one (``magic_function``), contains a
    distinctive word of a tool's name ("weather" for ``get_weather``, "add" for ``add``),
    or asks for a tool outright (the word "tool"/"tools": then the best match, else the
    first tool).
    """
    words = {w.lower() for w in re.findall(r"\w+", text)}
    best, best_score = None, 0
    for tool in tools:
        score = _tool_score(tool, text, words)
        if score > best_score:
            best, best_score = tool, score
    if best is None and _ASKS_FOR_TOOL.search(text):
        return tools[0]
    return best


@dataclass
class ScriptedEngine:
    """Deterministic engine whose answers name the instance and model that produced them.

    ``reply_template`` is formatted with ``instance``, ``model`` and ``prompt`` (the last user
    message), so an answer repeats its prompt word for word: a RAG prompt that carries the
    retrieved context gets that context back, which lets a test see what was retrieved.

    ``tool_policy``: ``"auto"`` (default) calls a bound tool only when the last user message
    calls for one, like a cooperative model: it names the tool (``magic_function(3)``),
    contains a distinctive word of its name ("weather" -> ``get_weather``; generic words such
    as "get" do not count), or asks for a tool with the word "tool"/"tools" (then the best
    match, else the first tool). Any other question ("Hello!") is answered in text, and a
    tool result as the last message is answered in text quoting it. ``"first"`` always calls
    the first tool; ``"never"`` never calls tools; a callable gets the turn and returns a
    ``ToolDecision`` or ``None`` (answer in text). ``format="json"`` yields an object whose keys
    are the quoted identifiers of the prompt (``'setup'`` and ``'punchline'``) or ``answer``;
    a schema ``format`` yields a valid instance of it.
    """

    reply_template: str = "Hello from {instance} ({model}). You said: {prompt}"
    tool_policy: ToolPolicy = "auto"
    thinking_template: str = "The user wrote {prompt!r}; I will answer from {instance}."

    # ------------------------------------------------------------------ entry point
    def chat(self, turn: ChatTurn) -> Iterator[EngineEvent]:
        """Yield the scripted answer of ``turn`` as events."""
        prompt = turn.last_user_text
        if turn.think:
            thought = self.thinking_template.format(
                prompt=prompt, instance=turn.instance, model=turn.model
            )
            for tok in split_tokens(thought):
                yield ThinkingToken(tok)

        call = self._decide_tool(turn)
        if call is not None:
            yield call
            yield DoneEvent("stop", prompt_eval_count=count_words(turn.messages))
            return

        for tok in split_tokens(self._answer_text(turn)):
            yield TextToken(tok)
        yield DoneEvent("stop", prompt_eval_count=count_words(turn.messages))

    # ------------------------------------------------------------------ embeddings
    def embed(self, spec: StandInModel, texts: Sequence[str]) -> list[list[float]]:
        """Scripted vectors (:func:`embed_text`) of ``texts``, ``spec.embedding_length`` long.

        Only a model with the ``embedding`` capability embeds; any other raises
        :class:`EmbeddingNotSupported`, which the server answers as Ollama does (501
        "this model does not support embeddings").
        """
        if not spec.has("embedding"):
            raise EmbeddingNotSupported
        return [embed_text(spec.digest, t, spec.embedding_length) for t in texts]

    # ------------------------------------------------------------------ tools
    def _decide_tool(self, turn: ChatTurn) -> ToolCallEvent | None:
        tools = [t for t in turn.tools if _tool_function(t).get("name")]
        if not tools or self.tool_policy == "never":
            return None
        if callable(self.tool_policy):
            decision = self.tool_policy(turn)
            if decision is None:
                return None
            if decision.arguments is not None:
                return ToolCallEvent(decision.name, dict(decision.arguments))
            chosen = next(
                (t for t in tools if _tool_function(t).get("name") == decision.name), None
            )
            if chosen is None:
                return ToolCallEvent(decision.name, {})
            return ToolCallEvent(decision.name, self._arguments(chosen, turn.last_user_text))
        if turn.last_message.get("role") == "tool":
            return None
        pick = tools[0] if self.tool_policy == "first" else _best_tool(tools, turn.last_user_text)
        if pick is None:
            return None
        chosen = pick
        name = str(_tool_function(chosen)["name"])
        return ToolCallEvent(name, self._arguments(chosen, turn.last_user_text))

    @staticmethod
    def _arguments(tool: dict[str, Any], prompt: str) -> dict[str, Any]:
        params = _tool_function(tool).get("parameters")
        if not isinstance(params, dict) or not params.get("properties"):
            return {}
        # Mention of the tool's own name, e.g. "magic_function(3)", must not feed string args.
        name = str(_tool_function(tool).get("name", ""))
        text = prompt.replace(name, " ") if name else prompt
        value = instance_for(params, PromptHints(text), optional=False)
        return value if isinstance(value, dict) else {}

    # ------------------------------------------------------------------ text answers
    def _answer_text(self, turn: ChatTurn) -> str:
        if turn.format is not None:
            return self._structured(turn)
        last = turn.last_message
        if last.get("role") == "tool":
            tool_name = last.get("tool_name") or self._last_called_tool(turn) or "tool"
            result = _content_text(last.get("content"))
            return f"From {turn.instance} ({turn.model}): the {tool_name} tool returned {result}."
        return self.reply_template.format(
            instance=turn.instance, model=turn.model, prompt=turn.last_user_text
        )

    @staticmethod
    def _last_called_tool(turn: ChatTurn) -> str | None:
        for msg in reversed(turn.messages):
            calls = msg.get("tool_calls")
            if msg.get("role") == "assistant" and isinstance(calls, list) and calls:
                fn = calls[0].get("function", {}) if isinstance(calls[0], dict) else {}
                name = fn.get("name") if isinstance(fn, dict) else None
                return str(name) if name else None
        return None

    def _structured(self, turn: ChatTurn) -> str:
        prompt = turn.last_user_text
        label = f"from {turn.instance}"
        if isinstance(turn.format, dict):
            value = instance_for(turn.format, PromptHints(prompt, strings=False), label=label)
        else:
            keys: list[str] = []
            for m in re.finditer(r"'([A-Za-z_]\w*)'|\"([A-Za-z_]\w*)\"", prompt):
                key = m.group(1) or m.group(2)
                if key not in keys:
                    keys.append(key)
            if keys:
                value = {k: f"{k} {label}" for k in keys}
            else:
                value = {
                    "answer": self.reply_template.format(
                        instance=turn.instance, model=turn.model, prompt=prompt
                    )
                }
        return json.dumps(value, ensure_ascii=False)
