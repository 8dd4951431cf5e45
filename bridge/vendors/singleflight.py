"""One run of a piece of work per key at a time in this process; callers that arrive meanwhile share it.

The token primitive (``bridge.vendors.tokens.TokenKeeper``) uses it as the first
of its two layers: when many requests find the same token due at once, one of
them refreshes (under the cross-replica lease) and the others wait for that
refresh and take its answer, instead of each taking the lease in turn only to
find the work done.
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import anyio

T = TypeVar("T")


@dataclass
class _Flight(Generic[T]):
    done: anyio.Event = field(default_factory=anyio.Event)
    result: T | None = None
    error: BaseException | None = None
    finished: bool = False  # False when the run was cancelled: it has no outcome to share


class SingleFlight(Generic[T]):
    """``run(key, work)``: run ``work`` unless a run for ``key`` is under way; then wait and share its outcome.

    A run that ends with an exception gives every waiting caller that exception;
    a run that was cancelled gives them nothing, so the next of them runs the
    work itself. Only callers that arrive while a run is under way share it:
    the next call after it ends runs the work again.
    """

    def __init__(self) -> None:
        self._running: dict[Hashable, _Flight[T]] = {}

    def running(self, key: Hashable) -> bool:
        return key in self._running

    async def run(self, key: Hashable, work: Callable[[], Awaitable[T]]) -> T:
        while (flight := self._running.get(key)) is not None:
            await flight.done.wait()
            if flight.finished:
                if flight.error is not None:
                    raise _for_another_caller(flight.error)
                return flight.result  # type: ignore[return-value]
        flight = _Flight[T]()
        self._running[key] = flight
        try:
            flight.result = await work()
            flight.finished = True
            return flight.result
        except Exception as exc:
            flight.error, flight.finished = exc, True
            raise
        finally:
            del self._running[key]
            flight.done.set()


def _for_another_caller(error: BaseException) -> BaseException:
    """A copy of the run's exception, caused by it: one instance raised in every waiting task would
    gather all of their frames in its traceback."""
    try:
        twin = copy.copy(error)
    except Exception:  # an exception that cannot be rebuilt from its args
        return error
    if type(twin) is not type(error) or twin is error:
        return error
    twin.__cause__ = error
    return twin
