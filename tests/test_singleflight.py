"""SingleFlight: callers of the same key that arrive during a run share it; nothing else does."""

from __future__ import annotations

import anyio
import pytest

from bridge.vendors.singleflight import SingleFlight

pytestmark = pytest.mark.anyio


class Work:
    """Counts its runs; each run waits until released, then answers its run number (or raises)."""

    def __init__(self, error: Exception | None = None) -> None:
        self.runs = 0
        self.release = anyio.Event()
        self.error = error

    async def __call__(self) -> int:
        self.runs += 1
        number = self.runs
        await self.release.wait()
        if self.error is not None:
            raise self.error
        return number


async def _callers(flight: SingleFlight[int], key: str, work: Work, count: int) -> list[object]:
    results: list[object] = []

    async def call() -> None:
        try:
            results.append(await flight.run(key, work))
        except Exception as exc:
            results.append(exc)

    async with anyio.create_task_group() as tasks:
        for _ in range(count):
            tasks.start_soon(call)
        await anyio.wait_all_tasks_blocked()
        assert flight.running(key)
        work.release.set()
    return results


async def test_callers_arriving_during_a_run_share_its_result() -> None:
    flight: SingleFlight[int] = SingleFlight()
    work = Work()
    assert await _callers(flight, "link-1", work, 50) == [1] * 50
    assert work.runs == 1
    assert not flight.running("link-1")


async def test_a_failed_run_gives_every_waiting_caller_its_error() -> None:
    flight: SingleFlight[int] = SingleFlight()
    error = ValueError("refused")
    work = Work(error)
    results = await _callers(flight, "link-1", work, 20)
    assert work.runs == 1
    assert all(type(r) is ValueError and str(r) == "refused" for r in results)
    # the caller that ran it gets the error itself; the others a copy caused by it, with a traceback of their own
    assert results.count(error) == 1
    assert all(r.__cause__ is error for r in results if r is not error)


class Refused(Exception):
    def __init__(self, error: str, reason: str) -> None:
        super().__init__(f"{error}: {reason}")


async def test_an_error_that_cannot_be_copied_is_shared_as_it_is() -> None:
    flight: SingleFlight[int] = SingleFlight()
    error = Refused("invalid_grant", "expired")
    work = Work(error)
    assert await _callers(flight, "link-1", work, 5) == [error] * 5


async def test_the_next_call_after_a_run_runs_the_work_again() -> None:
    flight: SingleFlight[int] = SingleFlight()
    work = Work()
    work.release.set()
    assert await flight.run("k", work) == 1
    assert await flight.run("k", work) == 2
    failing = Work(RuntimeError("once"))
    failing.release.set()
    with pytest.raises(RuntimeError):
        await flight.run("k", failing)
    failing.error = None
    assert await flight.run("k", failing) == 2


async def test_other_keys_run_on_their_own() -> None:
    flight: SingleFlight[int] = SingleFlight()
    a, b = Work(), Work()
    results: dict[str, int] = {}

    async def call(key: str, work: Work) -> None:
        results[key] = await flight.run(key, work)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(call, "a", a)
        tasks.start_soon(call, "b", b)
        await anyio.wait_all_tasks_blocked()
        assert flight.running("a") and flight.running("b")
        b.release.set()
        await anyio.wait_all_tasks_blocked()
        assert results == {"b": 1} and flight.running("a")
        a.release.set()
    assert results == {"a": 1, "b": 1}


async def test_a_cancelled_run_shares_nothing_and_a_waiting_caller_runs_the_work() -> None:
    flight: SingleFlight[int] = SingleFlight()
    work = Work()
    followers: list[int] = []

    async def follower() -> None:
        followers.append(await flight.run("k", work))

    leader_scope = anyio.CancelScope()

    async def leader() -> None:
        with leader_scope:
            await flight.run("k", work)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(leader)
        await anyio.wait_all_tasks_blocked()
        for _ in range(5):
            tasks.start_soon(follower)
        await anyio.wait_all_tasks_blocked()
        assert work.runs == 1
        leader_scope.cancel()
        await anyio.wait_all_tasks_blocked()
        assert work.runs == 2  # one follower took over; the other four wait for it
        work.release.set()
    assert leader_scope.cancelled_caught
    assert followers == [2] * 5
