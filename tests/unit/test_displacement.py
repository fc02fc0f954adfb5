"""Registration lifecycle: a second endpoint with the same identity displaces the first, which
is told (``displaced``, :class:`Displaced` from accept/connect) and closes; ``listen`` exits 4
with the reason. Alone and in a relay fleet."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from punchthrough.endpoint import Displaced, Endpoint, EndpointClosed, EndpointConfig
from punchthrough.endpoint.relaymap import RelayInfo, RelayMap
from punchthrough.identity import Identity
from punchthrough.netio import UdpNetwork
from punchthrough.relay import RelayLimits, RelayServer
from punchthrough.relay.directory import MemoryDirectory
from punchthrough.relay.fleet import FleetConfig

NET = UdpNetwork()
HOST = "127.0.0.1"
CFG = EndpointConfig(direct=False)


async def wait_until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("fleet", [False, True])
async def test_second_instance_displaces_the_first_which_is_told(fleet: bool) -> None:
    directory = MemoryDirectory()
    server = await RelayServer.start(
        NET,
        [(HOST, 0)],
        limits=RelayLimits(shutdown_grace=0.05),
        fleet=FleetConfig("r1", directory) if fleet else None,
    )
    try:
        addr = server.addresses[0]
        kw: dict[str, object] = (
            {"relay_map": RelayMap([RelayInfo("r1", (addr,))])} if fleet else {"relays": [addr]}
        )
        ident = Identity.generate()
        first = await Endpoint.bind(ident, host=HOST, config=CFG, **kw)  # type: ignore[arg-type]
        pending = asyncio.ensure_future(first.accept())
        second = await Endpoint.bind(ident, host=HOST, config=CFG, **kw)  # type: ignore[arg-type]
        try:
            with pytest.raises(Displaced, match="another endpoint with this identity") as info:
                await asyncio.wait_for(pending, 5)
            assert isinstance(info.value, EndpointClosed)  # what accept() loops already handle
            assert first.displaced is not None and first.stats["displaced"] == 1
            await wait_until(lambda: first.closed)
            with pytest.raises(Displaced):
                await first.connect(Identity.generate().peer_id)
            # the second one is the reachable one
            assert not second.closed and second.displaced is None
            async with Endpoint.bind(Identity.generate(), host=HOST, config=CFG, **kw) as caller:  # type: ignore[arg-type]
                accept = asyncio.ensure_future(second.accept())
                await caller.connect(ident.peer_id, timeout=5)
                await asyncio.wait_for(accept, 5)
        finally:
            await first.close()
            await second.close()
    finally:
        await server.close()


def _env() -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[2] / "src")
    return {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}


async def test_listen_exits_4_with_the_reason_when_displaced(tmp_path: Path) -> None:
    server = await RelayServer.start(NET, [(HOST, 0)], limits=RelayLimits(shutdown_grace=0.05))
    try:
        h, p = server.addresses[0]
        ident = Identity.generate()
        key = tmp_path / "k.key"
        ident.save(key)
        argv = [sys.executable, "-m", "punchthrough", "listen", "--identity", str(key)]
        argv += ["--relay", f"{h}:{p}", "--json", "--bind", HOST]
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env()
        )
        try:
            assert proc.stdout is not None
            ready = json.loads(await asyncio.wait_for(proc.stdout.readline(), 20))
            assert ready["event"] == "listening"
            async with Endpoint.bind(ident, relays=[(h, p)], host=HOST, config=CFG):
                out, err = await asyncio.wait_for(proc.communicate(), 20)
            assert proc.returncode == 4
            assert json.loads(out.decode().splitlines()[-1])["event"] == "displaced"
            assert "displaced: another endpoint with this identity" in err.decode()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    finally:
        await server.close()
