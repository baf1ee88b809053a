"""langchain-contextharbor: one LangChain chat model over a GPU and a CPU Ollama server.

The public API is the names in ``__all__`` below; everything else is private and may change.
The package logs to the ``langchain_contextharbor`` logger, which has a ``NullHandler``: a
library does not print, the application decides where its records go (``logging.basicConfig``
or a handler of its own).
"""

import logging as _logging

# First, before any module below imports ollama: importing it reads the environment, and a
# bad value there must not make this import fail (issue 18; see _ollama_import).
from langchain_contextharbor import _ollama_import  # noqa: F401 - imported for that effect
from langchain_contextharbor.backends import (
    DEFAULT_CPU_URL,
    DEFAULT_GPU_URL,
    BackendConfig,
    Timeouts,
    backends_from_env,
    ollama_host_url,
    redact_url,
)
from langchain_contextharbor.breaker import BreakerPolicy, CircuitBreaker
from langchain_contextharbor.chat_models import ABANDONED_EVENT, HybridChatOllama
from langchain_contextharbor.classify import Classification, FailoverCategory, classify_exception
from langchain_contextharbor.embeddings import BatchRecord, HybridOllamaEmbeddings
from langchain_contextharbor.errors import (
    AllBackendsFailedError,
    AllBackendsUnreachableError,
    AttemptRecord,
    ConfigurationError,
    ContextHarborError,
    DeadlineExceededError,
    EmbeddingDigestMismatchError,
    EmbeddingInputError,
    EmptyResponseError,
    InvalidRequestError,
    ModelNotAvailableError,
    NoBackendAvailableError,
    RequestRejectedError,
    SkipRecord,
    StreamInterruptedError,
    TruncatedStreamError,
)
from langchain_contextharbor.health import (
    BackendHealth,
    check_backends,
    health_report,
    list_models,
    models_on_one_backend,
    preview_route,
    resolve_backends,
)
from langchain_contextharbor.routing import (
    BackendSnapshot,
    Candidate,
    LoadedModel,
    RoutePlan,
    RoutePolicy,
    RouteRequest,
    SpeedEstimate,
    SpeedPrior,
    estimate_finish,
    plan_route,
)
from langchain_contextharbor.sizing import DEFAULT_MODEL_SIZES
from langchain_contextharbor.smart import (
    asmart_chat_stream,
    get_default_model,
    reset_default_model,
    smart_chat,
    smart_chat_stream,
)

__version__ = "0.1.0"

# Without a handler of its own, a failover's WARNING would reach Python's last-resort handler
# and be printed to stderr in every script or notebook that never configured logging.
# (_ollama_import, imported first, adds it already: it may warn during the import.)
_logger = _logging.getLogger("langchain_contextharbor")
if not any(isinstance(h, _logging.NullHandler) for h in _logger.handlers):
    _logger.addHandler(_logging.NullHandler())

__all__ = [
    "ABANDONED_EVENT",
    "DEFAULT_CPU_URL",
    "DEFAULT_GPU_URL",
    "DEFAULT_MODEL_SIZES",
    "AllBackendsFailedError",
    "AllBackendsUnreachableError",
    "AttemptRecord",
    "BackendConfig",
    "BackendHealth",
    "BackendSnapshot",
    "BatchRecord",
    "BreakerPolicy",
    "Candidate",
    "CircuitBreaker",
    "Classification",
    "ConfigurationError",
    "ContextHarborError",
    "DeadlineExceededError",
    "EmbeddingDigestMismatchError",
    "EmbeddingInputError",
    "EmptyResponseError",
    "FailoverCategory",
    "HybridChatOllama",
    "HybridOllamaEmbeddings",
    "InvalidRequestError",
    "LoadedModel",
    "ModelNotAvailableError",
    "NoBackendAvailableError",
    "RequestRejectedError",
    "RoutePlan",
    "RoutePolicy",
    "RouteRequest",
    "SkipRecord",
    "SpeedEstimate",
    "SpeedPrior",
    "StreamInterruptedError",
    "Timeouts",
    "TruncatedStreamError",
    "__version__",
    "asmart_chat_stream",
    "backends_from_env",
    "check_backends",
    "classify_exception",
    "estimate_finish",
    "get_default_model",
    "health_report",
    "list_models",
    "models_on_one_backend",
    "ollama_host_url",
    "plan_route",
    "preview_route",
    "redact_url",
    "reset_default_model",
    "resolve_backends",
    "smart_chat",
    "smart_chat_stream",
]
