"""Model descriptions for the Ollama stand-in, plus the wire formats they are rendered with.

A stand-in instance "has" models (what ``/api/tags`` and ``/api/show`` report) and some of
them are "loaded" (what ``/api/ps`` reports). Both are described here so that a test can say
``StandInModel("qwen3:8b", capabilities=["completion", "tools", "thinking"])`` and get
believable sizes, digests and architecture numbers without spelling them out: a router that
sizes models against free VRAM needs *plausible* numbers, not real ones.

The formatting helpers reproduce the Go conventions Ollama uses on the wire (RFC3339Nano
timestamps with trailing zeros trimmed, ``format.HumanBytes2``), because clients parse them
and tests compare error texts verbatim.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

__all__ = [
    "CATALOGUE",
    "DEFAULT_NUM_CTX",
    "EMBEDDING_MODELS",
    "LoadedModel",
    "StandInModel",
    "catalogue_model",
    "human_bytes2",
    "normalize_model_name",
    "parse_parameter_size",
    "qualified_model_name",
    "rfc3339_nano",
]

#: ``OLLAMA_CONTEXT_LENGTH`` default in Ollama 0.12.0-0.15.4: the runner's ``num_ctx``.
DEFAULT_NUM_CTX = 4096

_REGISTRY = "registry.ollama.ai"
_GIB = 1024**3
_MIB = 1024**2
_KIB = 1024

# Approximate bits per weight of common GGUF quantisations; used only to invent a believable
# file size from a parameter count when the test does not give one.
_BITS_PER_WEIGHT: dict[str, float] = {
    "F32": 32.0,
    "F16": 16.0,
    "BF16": 16.0,
    "Q8_0": 8.5,
    "Q6_K": 6.6,
    "Q5_K_M": 5.7,
    "Q5_0": 5.5,
    "Q4_K_M": 4.9,
    "Q4_K_S": 4.6,
    "Q4_1": 5.0,
    "Q4_0": 4.5,
    "Q3_K_M": 3.9,
    "Q2_K": 3.4,
    "MXFP4": 4.3,
}

# (max parameters, block_count, embedding_length, head_count, head_count_kv): shapes of real
# models of that size class (SmolLM2-135M, Qwen2.5-0.5B, Llama-3.2-1B/3B, Llama-3.1-8B, ...).
_SHAPES: tuple[tuple[float, int, int, int, int], ...] = (
    (0.2e9, 30, 576, 9, 3),
    (0.6e9, 24, 896, 14, 2),
    (1.6e9, 16, 2048, 32, 8),
    (4.5e9, 28, 3072, 24, 8),
    (9.5e9, 32, 4096, 32, 8),
    (16e9, 40, 5120, 40, 8),
    (40e9, 64, 5120, 40, 8),
    (90e9, 80, 8192, 64, 8),
    (math.inf, 126, 16384, 128, 8),
)


#: Well-known embedding models as Ollama lists them: base name -> (parameter_size, family,
#: embedding dimensions). ``StandInModel("nomic-embed-text")`` gets these numbers and the
#: ``["embedding"]`` capability, so its vectors have the real model's length.
EMBEDDING_MODELS: dict[str, tuple[str, str, int]] = {
    "nomic-embed-text": ("137M", "nomic-bert", 768),
    "mxbai-embed-large": ("334M", "bert", 1024),
    "all-minilm": ("23M", "bert", 384),
    "snowflake-arctic-embed": ("335M", "bert", 1024),
    "bge-m3": ("567M", "bert", 1024),
}


#: What ``/api/pull`` can fetch, standing in for the registry: base name -> (capabilities,
#: tags). A pulled ``qwen3:0.6b`` becomes ``StandInModel("qwen3:0.6b", capabilities=...)``
#: (sizes derived from the tag); a name or tag not listed fails as a registry 404 does.
#: Capabilities are those ``/api/show`` reports for the real models (qwen2.5-coder is the one
#: with ``insert``, i.e. ``suffix``).
CATALOGUE: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "llama3.2": (("completion", "tools"), ("latest", "1b", "3b")),
    "llama3.1": (("completion", "tools"), ("latest", "8b")),
    "qwen3": (("completion", "tools", "thinking"), ("latest", "0.6b", "1.7b", "4b", "8b")),
    "qwen2.5": (("completion", "tools"), ("latest", "0.5b", "1.5b", "3b", "7b")),
    "qwen2.5-coder": (("completion", "tools", "insert"), ("latest", "0.5b", "1.5b", "7b")),
    "gemma3": (("completion", "vision"), ("latest", "270m", "1b", "4b")),
    "deepseek-r1": (("completion", "thinking"), ("latest", "1.5b", "7b", "8b")),
    "gpt-oss": (("completion", "tools", "thinking"), ("latest", "20b")),
    "smollm2": (("completion",), ("latest", "135m", "360m", "1.7b")),
    "nomic-embed-text": (("embedding",), ("latest", "v1.5")),
    "mxbai-embed-large": (("embedding",), ("latest",)),
    "all-minilm": (("embedding",), ("latest", "22m", "33m")),
    "snowflake-arctic-embed": (("embedding",), ("latest",)),
    "bge-m3": (("embedding",), ("latest",)),
}


def catalogue_model(name: str) -> StandInModel | None:
    """The model ``/api/pull`` of ``name`` fetches from :data:`CATALOGUE` (``None``: the
    registry has no such model or tag)."""
    short = normalize_model_name(name)
    if "/" in short:
        return None
    base, _, tag = short.partition(":")
    entry = CATALOGUE.get(base.lower())
    if entry is None or tag.lower() not in entry[1]:
        return None
    return StandInModel(short, capabilities=list(entry[0]))


def _base_name(short_name: str) -> str:
    return short_name.rsplit("/", 1)[-1].split(":", 1)[0].lower()


def normalize_model_name(name: str) -> str:
    """Return Ollama's canonical short form of a model name (``llama3.2`` -> ``llama3.2:latest``).

    Ollama resolves ``llama3.2``, ``llama3.2:latest`` and
    ``registry.ollama.ai/library/llama3.2:latest`` to the same model; the stand-in compares
    names in this normal form so all three spellings find it, while responses still echo the
    request string verbatim.
    """
    n = name.strip()
    if n.startswith(_REGISTRY + "/"):
        n = n[len(_REGISTRY) + 1 :]
    if n.startswith("library/"):
        n = n[len("library/") :]
    last = n.rsplit("/", 1)[-1]
    if ":" not in last:
        n += ":latest"
    return n


def qualified_model_name(name: str) -> str:
    """Fully qualified name as Ollama prints it in capability errors.

    ``gemma:2b`` -> ``registry.ollama.ai/library/gemma:2b``; a namespaced ``user/m:tag`` keeps
    its namespace; a name that already starts with a host (``hf.co/...``) is left alone.
    """
    short = normalize_model_name(name)
    first = short.split("/", 1)[0]
    if "/" in short and ("." in first or ":" in first):
        return short
    if "/" in short:
        return f"{_REGISTRY}/{short}"
    return f"{_REGISTRY}/library/{short}"


def parse_parameter_size(text: str) -> float:
    """Parse Ollama's ``parameter_size`` (``"3.2B"``, ``"135M"``, ``"8x7B"``) into a count."""
    m = re.fullmatch(r"\s*(?:(\d+)X)?(\d+(?:\.\d+)?)\s*([KMBT]?)\s*", text.upper())
    if not m:
        raise ValueError(f"unparseable parameter_size: {text!r}")
    experts = int(m.group(1)) if m.group(1) else 1
    scale = {"": 1.0, "K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}[m.group(3)]
    return experts * float(m.group(2)) * scale


def _format_parameter_size(count: float) -> str:
    if count >= 1e9:
        return f"{count / 1e9:.1f}B".replace(".0B", "B")
    return f"{count / 1e6:.0f}M"


def human_bytes2(n: int | float) -> str:
    """Go ``format.HumanBytes2``: one decimal, binary units (``4.5 GiB``, ``512.0 MiB``)."""
    b = float(n)
    if b >= _GIB:
        return f"{b / _GIB:.1f} GiB"
    if b >= _MIB:
        return f"{b / _MIB:.1f} MiB"
    if b >= _KIB:
        return f"{b / _KIB:.1f} KiB"
    return f"{int(b)} B"


def rfc3339_nano(ns: int | None = None, *, utc: bool = True) -> str:
    """Format a UNIX time in nanoseconds the way Go's ``time.RFC3339Nano`` does.

    Trailing zeros of the fraction are trimmed (and the dot with them); UTC is written ``Z``,
    which is what Ollama's ``created_at`` uses. ``utc=False`` renders the machine's local
    offset, as ``modified_at`` and ``expires_at`` do on a real server.
    """
    if ns is None:
        ns = time.time_ns()
    sec, frac = divmod(ns, 1_000_000_000)
    if utc:
        dt = datetime.fromtimestamp(sec, tz=timezone.utc)
    else:
        dt = datetime.fromtimestamp(sec).astimezone()
    text = dt.strftime("%Y-%m-%dT%H:%M:%S")
    frac_text = f"{frac:09d}".rstrip("0")
    if frac_text:
        text += "." + frac_text
    offset = dt.utcoffset() or timedelta(0)
    if offset == timedelta(0):
        return text + "Z"
    total = int(offset.total_seconds())
    sign = "+" if total >= 0 else "-"
    hh, mm = divmod(abs(total) // 60, 60)
    return f"{text}{sign}{hh:02d}:{mm:02d}"


def _default_family(short_name: str) -> str:
    base = _base_name(short_name)
    if base.startswith("llama"):
        return "llama"
    m = re.match(r"[a-z]+(?:\d+)?", base.split(".", 1)[0].replace("-", ""))
    return m.group(0) if m else "llama"


def _parameter_size_from_tag(short_name: str) -> str | None:
    tag = short_name.rsplit(":", 1)[-1].lower()
    m = re.match(r"(?:(\d+)x)?(\d+(?:\.\d+)?)([mb])(?:$|[-_])", tag)
    if not m:
        return None
    count = parse_parameter_size(
        (f"{m.group(1)}x" if m.group(1) else "") + m.group(2) + m.group(3).upper()
    )
    return _format_parameter_size(count)


@dataclass
class StandInModel:
    """One model a stand-in instance "has" (it appears in ``/api/tags`` and ``/api/show``).

    Only ``name`` is required; every zero/empty field is derived in ``__post_init__`` from the
    name and ``parameter_size`` so tests stay short. ``size`` is the file size in bytes;
    ``context_length`` is the *trained* context reported by ``/api/show`` (the loaded
    ``num_ctx`` that ``/api/ps`` shows is a separate, per-load value, default 4096).
    ``capabilities`` drives behaviour: without ``"tools"`` a chat with tools gets Ollama's 400,
    with ``"thinking"`` the model streams thinking chunks, ``["embedding"]`` refuses chat and
    is the only kind the scripted engine embeds with. Left empty, ``capabilities`` is
    ``["embedding"]`` for the models of :data:`EMBEDDING_MODELS` (which also give
    ``parameter_size``, ``family`` and ``embedding_length``), else ``["completion", "tools"]``.
    ``digest`` defaults to a hash of the name; give two stand-ins different digests for the
    same name to model two builds of one model (their scripted vectors then differ).
    """

    name: str
    size: int = 0
    digest: str = ""
    family: str = ""
    families: list[str] = field(default_factory=list)
    parameter_size: str = ""
    quantization_level: str = "Q4_K_M"
    format: str = "gguf"
    capabilities: list[str] = field(default_factory=list)
    context_length: int = 0
    block_count: int = 0
    head_count: int = 0
    head_count_kv: int = 0
    embedding_length: int = 0
    modified_at_ns: int = 0
    template: str = "{{ .System }}\n{{ .Prompt }}"
    parameters: str = 'stop                           "<|eot_id|>"'

    def __post_init__(self) -> None:
        self.name = normalize_model_name(self.name)
        known = EMBEDDING_MODELS.get(_base_name(self.name))
        if not self.capabilities:
            self.capabilities = ["embedding"] if known else ["completion", "tools"]
        if known is not None:
            self.parameter_size = self.parameter_size or known[0]
            self.family = self.family or known[1]
            self.embedding_length = self.embedding_length or known[2]
        if not self.parameter_size:
            self.parameter_size = _parameter_size_from_tag(self.name) or "3.2B"
        params = parse_parameter_size(self.parameter_size)
        if not self.family:
            self.family = _default_family(self.name)
        if not self.families:
            self.families = [self.family]
        if not self.size:
            bits = _BITS_PER_WEIGHT.get(self.quantization_level.upper(), 4.9)
            self.size = int(params * bits / 8) + 50 * _MIB
        if not self.digest:
            self.digest = hashlib.sha256(self.name.encode()).hexdigest()
        shape = next(s for s in _SHAPES if params <= s[0])
        self.block_count = self.block_count or shape[1]
        self.embedding_length = self.embedding_length or shape[2]
        self.head_count = self.head_count or shape[3]
        self.head_count_kv = self.head_count_kv or shape[4]
        if not self.context_length:
            self.context_length = 8192 if params < 1e9 else 131072
        if not self.modified_at_ns:
            self.modified_at_ns = time.time_ns()

    # ------------------------------------------------------------------ derived numbers
    @property
    def parameter_count(self) -> int:
        """Parameter count as an integer (``general.parameter_count`` in ``/api/show``)."""
        return int(parse_parameter_size(self.parameter_size))

    @property
    def architecture(self) -> str:
        """``general.architecture``; Ollama uses the family name for it."""
        return self.family

    def has(self, capability: str) -> bool:
        """Whether the model declares ``capability`` (``tools``, ``thinking``, ...)."""
        return capability in self.capabilities

    def kv_cache_bytes(self, num_ctx: int) -> int:
        """f16 K+V cache size for ``num_ctx`` tokens: what grows ``/api/ps`` ``size``."""
        head_dim = max(1, self.embedding_length // max(1, self.head_count))
        return 2 * self.block_count * self.head_count_kv * head_dim * num_ctx * 2

    def loaded_size(self, num_ctx: int) -> int:
        """Total bytes of a loaded runner: weights + KV cache + a compute-graph allowance."""
        graph = max(64 * _MIB, self.size // 20)
        return self.size + self.kv_cache_bytes(num_ctx) + graph

    def layers(self) -> list[tuple[str, int]]:
        """``(digest, size)`` of the blobs a pull of this model fetches, model weights first
        (then template, params and config), as a registry manifest lists them."""
        parts = [
            ("model", self.size),
            ("template", len(self.template.encode())),
            ("params", len(self.parameters.encode()) + 2),
            ("config", 487),
        ]
        return [
            ("sha256:" + hashlib.sha256(f"{self.digest}:{kind}".encode()).hexdigest(), size)
            for kind, size in parts
        ]

    # ------------------------------------------------------------------ wire renderings
    def details(self) -> dict[str, Any]:
        """The ``details`` object shared by tags, ps and show."""
        return {
            "parent_model": "",
            "format": self.format,
            "family": self.family,
            "families": list(self.families),
            "parameter_size": self.parameter_size,
            "quantization_level": self.quantization_level,
        }

    def tags_entry(self) -> dict[str, Any]:
        """One element of ``/api/tags`` ``models``."""
        return {
            "name": self.name,
            "model": self.name,
            "modified_at": rfc3339_nano(self.modified_at_ns, utc=False),
            "size": self.size,
            "digest": self.digest,
            "details": self.details(),
        }

    def model_info(self) -> dict[str, Any]:
        """``model_info`` of ``/api/show``: always present, keyed by architecture."""
        arch = self.architecture
        return {
            "general.architecture": arch,
            "general.file_type": 15,
            "general.parameter_count": self.parameter_count,
            "general.quantization_version": 2,
            f"{arch}.attention.head_count": self.head_count,
            f"{arch}.attention.head_count_kv": self.head_count_kv,
            f"{arch}.block_count": self.block_count,
            f"{arch}.context_length": self.context_length,
            f"{arch}.embedding_length": self.embedding_length,
        }

    def show_response(self) -> dict[str, Any]:
        """Body of ``POST /api/show``."""
        params = self.parameters
        modelfile = (
            '# Modelfile generated by "ollama show"\n'
            f"# To build a new Modelfile based on this, replace FROM with:\n"
            f"# FROM {self.name}\n\n"
            f"FROM /usr/share/ollama/.ollama/models/blobs/sha256-{self.digest}\n"
            f'TEMPLATE """{self.template}"""\n'
            + "".join(f"PARAMETER {line}\n" for line in params.splitlines() if line.strip())
        )
        return {
            "modelfile": modelfile,
            "parameters": params,
            "template": self.template,
            "details": self.details(),
            "model_info": self.model_info(),
            "capabilities": list(self.capabilities),
            "modified_at": rfc3339_nano(self.modified_at_ns, utc=False),
        }


@dataclass
class LoadedModel:
    """A model resident in a stand-in's memory, as ``/api/ps`` lists it.

    ``num_gpu`` and ``context_length`` are the runner options it was loaded with: a request
    asking for different ones triggers a reload (with ``load_delay``), as in Ollama's
    ``needsReload``. ``in_flight`` requests pin ``expires_at``, which is refreshed to
    now + keep_alive when the model goes idle.
    """

    model: StandInModel
    size: int
    size_vram: int
    context_length: int
    expires_at_ns: int
    num_gpu: int = -1
    in_flight: int = 0
    keep_alive_ns: int = 300 * 1_000_000_000

    def ps_entry(self) -> dict[str, Any]:
        """One element of ``/api/ps`` ``models``."""
        return {
            "name": self.model.name,
            "model": self.model.name,
            "size": self.size,
            "digest": self.model.digest,
            "details": self.model.details(),
            "expires_at": rfc3339_nano(self.expires_at_ns, utc=False),
            "size_vram": self.size_vram,
            "context_length": self.context_length,
        }
