"""langchain-contextharbor: one LangChain chat model over a GPU and a CPU Ollama server.

Public API (everything else is private and may change):
"""

from langchain_contextharbor.backends import (
    DEFAULT_CPU_URL,
    DEFAULT_GPU_URL,
    BackendConfig,
    Timeouts,
    backends_from_env,
    redact_url,
)
from langchain_contextharbor.breaker import BreakerPolicy, CircuitBreaker
from langchain_contextharbor.chat_models import HybridChatOllama
from langchain_contextharbor.classify import Classification, FailoverCategory, classify_exception
from langchain_contextharbor.errors import (
    AllBackendsFailedError,
    AttemptRecord,
    ConfigurationError,
    ContextHarborError,
    EmptyResponseError,
    ModelNotAvailableError,
    NoBackendAvailableError,
    SkipRecord,
    StreamInterruptedError,
)
from langchain_contextharbor.routing import (
    BackendSnapshot,
    Candidate,
    LoadedModel,
    RoutePlan,
    RoutePolicy,
    RouteRequest,
    plan_route,
)
from langchain_contextharbor.sizing import DEFAULT_MODEL_SIZES

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_CPU_URL",
    "DEFAULT_GPU_URL",
    "DEFAULT_MODEL_SIZES",
    "AllBackendsFailedError",
    "AttemptRecord",
    "BackendConfig",
    "BackendSnapshot",
    "BreakerPolicy",
    "Candidate",
    "CircuitBreaker",
    "Classification",
    "ConfigurationError",
    "ContextHarborError",
    "EmptyResponseError",
    "FailoverCategory",
    "HybridChatOllama",
    "LoadedModel",
    "ModelNotAvailableError",
    "NoBackendAvailableError",
    "RoutePlan",
    "RoutePolicy",
    "RouteRequest",
    "SkipRecord",
    "StreamInterruptedError",
    "Timeouts",
    "__version__",
    "backends_from_env",
    "classify_exception",
    "plan_route",
    "redact_url",
]
