"""Same seed, same run bit for bit; and the simulator is fast."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

from punchthrough.netio import Address, DatagramSocket
from punchthrough.scenario.netcheck import run_sim_netcheck
from punchthrough.sim import Link, NatConfig, World, nat_config, run


async def media_call(world: World, seconds: float, pps: int = 50) -> int:
    """Two peers behind NATs ping-pong through a public echo at ``pps`` each way."""
    link = Link(0.02, jitter=0.01, loss=0.02)
    relay_host = world.add_host("relay", "198.51.100.1", link=link)
    relay = await relay_host.bind("198.51.100.1", 3478)
    relay.set_receiver(lambda d, a: relay.sendto(d, a))
    socks: list[DatagramSocket] = []
    received: list[int] = []
    cfgs = [nat_config("apdm-random", churn=5.0), NatConfig("eim", "apdf", "sequential", churn=2.0)]
    for i, cfg in enumerate(cfgs):
        assert cfg is not None
        nat = world.add_nat(f"nat{i}", cfg, f"203.0.113.{i + 1}", link=link)
        sock = await nat.add_host(f"peer{i}", "10.0.1.2", link=link).bind()
        sock.set_receiver(lambda d, a: received.append(len(d)))
        socks.append(sock)

    async def talk(sock: DatagramSocket, dest: Address) -> None:
        for n in range(int(seconds * pps)):
            sock.sendto(n.to_bytes(4, "big") * 40, dest)
            await asyncio.sleep(1 / pps)

    await asyncio.gather(*(talk(s, ("198.51.100.1", 3478)) for s in socks))
    await asyncio.sleep(1)
    return len(received)


def _traced_run(seed: int) -> tuple[str, dict[str, int]]:
    async def main() -> tuple[str, dict[str, int]]:
        world = World(trace=True)
        await media_call(world, 5.0)
        return world.format_trace(), dict(world.stats)

    return run(main(), seed=seed)


def test_same_seed_same_trace_bit_for_bit() -> None:
    a, stats_a = _traced_run(7)
    b, stats_b = _traced_run(7)
    assert a == b and stats_a == stats_b
    assert "loss on link" in a and "churn" in a and stats_a["sent"] > 900
    c, _ = _traced_run(8)
    assert c != a


def test_netcheck_trace_is_deterministic() -> None:
    def trace(seed: int) -> str:
        res = run_sim_netcheck(
            "apdm-sequential",
            seed=seed,
            trace=True,
            churn=20.0,
            link=Link(0.01, jitter=0.005, loss=0.05),
        )
        return res.world.format_trace()

    assert trace(3) == trace(3)


def test_trace_does_not_depend_on_python_hash_seed() -> None:
    """Set/dict iteration over str varies with PYTHONHASHSEED; the simulator must not."""
    code = (
        "import hashlib, sys\n"
        "sys.path.insert(0, 'tests/sim')\n"
        "from test_determinism_perf import _traced_run\n"
        "print(hashlib.sha256(_traced_run(5)[0].encode()).hexdigest())\n"
    )
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONHASHSEED="12345", PYTHONPATH=str(root / "src"))
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=root,
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    assert out == hashlib.sha256(_traced_run(5)[0].encode()).hexdigest()


def test_sixty_virtual_seconds_of_calls_run_fast() -> None:
    async def main() -> tuple[float, int, int]:
        world = World()
        got = await media_call(world, 60.0)
        return asyncio.get_running_loop().time(), got, world.stats["sent"]

    started = time.perf_counter()
    vtime, received, sent = run(main(), seed=1)
    real = time.perf_counter() - started
    assert vtime >= 61.0 and sent > 11000  # 6000 from the peers, the rest echoed
    # each round trip crosses 6 links with 2 % loss: 0.98**6 = 89 % of 6000 come back
    assert 4800 < received < 5700
    # Generous bound (measured ~0.2 s): catches an accidental real sleep or a quadratic path.
    assert real < 5.0, f"{sent} packets over 60 virtual s took {real:.2f} s real"
