"""Virtual time: every asyncio timing primitive runs on the simulated clock."""

from __future__ import annotations

import asyncio
import random

import pytest

from punchthrough.sim import SimulationDeadlock, SimulationTimeLimit, VirtualTimeLoop, run


def test_sleep_sixty_virtual_seconds() -> None:
    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        stamps = [loop.time()]
        await asyncio.sleep(60)
        stamps.append(loop.time())
        await asyncio.sleep(0.25)
        stamps.append(loop.time())
        return stamps

    assert run(main()) == [0.0, 60.0, 60.25]


def test_timeout_wait_for_call_later_call_at() -> None:
    async def main() -> list[tuple[str, float]]:
        loop = asyncio.get_running_loop()
        seen: list[tuple[str, float]] = []
        loop.call_later(2.0, lambda: seen.append(("later", loop.time())))
        loop.call_at(1.0, lambda: seen.append(("at", loop.time())))
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(5):
                await asyncio.sleep(100)
        seen.append(("timeout", loop.time()))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.sleep(100), 1.5)
        seen.append(("wait_for", loop.time()))
        assert await asyncio.wait_for(asyncio.sleep(0.5, result=7), 1.0) == 7
        seen.append(("done", loop.time()))
        return seen

    assert run(main()) == [
        ("at", 1.0),
        ("later", 2.0),
        ("timeout", 5.0),
        ("wait_for", 6.5),
        ("done", 7.0),
    ]


def test_concurrent_tasks_interleave_by_virtual_time() -> None:
    async def ticker(name: str, period: float, out: list[tuple[float, str]]) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(3):
            await asyncio.sleep(period)
            out.append((loop.time(), name))

    async def main() -> list[tuple[float, str]]:
        out: list[tuple[float, str]] = []
        await asyncio.gather(ticker("a", 1.0, out), ticker("b", 1.5, out))
        return out

    assert run(main()) == [(1.0, "a"), (1.5, "b"), (2.0, "a"), (3.0, "b"), (3.0, "a"), (4.5, "b")]


def test_deadlock_is_reported_not_hung() -> None:
    async def main() -> None:
        await asyncio.get_running_loop().create_future()

    with pytest.raises(SimulationDeadlock):
        run(main())


def test_time_limit_stops_runaway_loops_and_cleans_up() -> None:
    cleaned: list[float] = []

    async def main() -> None:
        try:
            while True:
                await asyncio.sleep(10)
        finally:
            cleaned.append(asyncio.get_running_loop().time())

    with pytest.raises(SimulationTimeLimit):
        run(main(), time_limit=100.0)
    assert cleaned == [100.0]


def test_leftover_tasks_are_cancelled_and_random_is_restored() -> None:
    random.seed(12345)
    expected_next = random.random()
    random.seed(12345)

    async def main() -> float:
        asyncio.get_running_loop().create_task(asyncio.sleep(1e6))
        return random.random()

    first = run(main(), seed=3)
    assert run(main(), seed=3) == first  # the global random module is seeded by the run
    assert random.random() == expected_next  # and restored afterwards


def test_loop_is_virtual_and_has_no_io() -> None:
    async def main() -> bool:
        loop = asyncio.get_running_loop()
        with pytest.raises(NotImplementedError):
            await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("0.0.0.0", 0))
        return isinstance(loop, VirtualTimeLoop)

    assert run(main())
