"""What every endpoint handler of the stand-in shares: the :class:`StandIn` it answers for,
the :class:`Blob` record, and loading a model / holding a generation slot.

Apart from the handlers (:mod:`._endpoints` gathers them) so each handler module imports
this and not one another.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from langchain_contextharbor.testing._exchange import _Exchange
from langchain_contextharbor.testing._gguf import GGUFInfo
from langchain_contextharbor.testing._residency import Residency
from langchain_contextharbor.testing._slots import Slots
from langchain_contextharbor.testing._values import StandInConfig
from langchain_contextharbor.testing._wire import _POLL, _Aborted
from langchain_contextharbor.testing.engines import (
    Engine,
)
from langchain_contextharbor.testing.models import (
    LoadedModel,
    StandInModel,
)


@dataclass(frozen=True)
class Blob:
    """An uploaded blob: its size and, for a GGUF file, its header (``None`` otherwise).
    The bytes themselves are not kept."""

    size: int
    gguf: GGUFInfo | None = None
    gguf_error: str = ""


class StandIn(Protocol):
    """What an endpoint uses of the stand-in it answers for (``server.OllamaStandIn`` is
    one): its settings, engine, models, residency and slots, through their public API.
    Declared here, by the user, so this module does not import the server that imports it.
    """

    config: StandInConfig
    engine: Engine
    residency: Residency
    slots: Slots
    blobs: dict[str, Blob]

    @property
    def name(self) -> str: ...

    @property
    def models(self) -> list[StandInModel]: ...

    @property
    def loaded(self) -> list[LoadedModel]: ...

    def get_model(self, name: str) -> StandInModel | None: ...

    def add_model(self, model: StandInModel | str, *, loaded: bool = False) -> StandInModel: ...

    def remove_model(self, name: str) -> None: ...

    def unload(self, name: str | None = None) -> None: ...


# ---------------------------------------------------------------------------- load / slots
@contextlib.contextmanager
def _use_model(
    srv: StandIn,
    ex: _Exchange,
    spec: StandInModel,
    options: dict[str, Any],
    keep_alive_ns: int | None,
) -> Iterator[int]:
    """Load ``spec`` if needed (paying ``load_delay``), pin it while the body runs."""
    num_ctx = int(options.get("num_ctx") or srv.config.num_ctx)
    num_gpu = int(options.get("num_gpu", -1))
    residency = srv.residency
    ka = keep_alive_ns if keep_alive_ns is not None else residency.keep_alive_ns()
    t0 = time.perf_counter_ns()
    pin = residency.pin(spec, num_ctx=num_ctx, num_gpu=num_gpu)
    try:
        if pin.loads:
            try:
                ex.sleep(srv.config.load_delay)
            finally:
                pin.loaded()
        else:
            while not pin.wait_loaded(_POLL):
                if ex.stop_event.is_set() or ex.client_gone():
                    raise _Aborted
        load_ns = max(time.perf_counter_ns() - t0, 1_000)
        yield load_ns
    finally:
        residency.unpin(pin, ka)


@contextlib.contextmanager
def _slot(srv: StandIn, ex: _Exchange) -> Iterator[None]:
    """One of ``num_parallel`` generation slots; 503 beyond ``max_queue`` waiters."""
    with srv.slots.hold(lambda: ex.stop_event.is_set() or ex.client_gone()):
        yield
