"""Stream links through a real HTTP proxy: tinyproxy (Debian's), started by the test on
loopback with a config in a temporary directory, stopped by its PID. HTTP CONNECT with and
without basic auth, a proxy that refuses, the environment variables, NO_PROXY."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from punchthrough.endpoint import Endpoint, EndpointConfig
from punchthrough.identity import Identity
from punchthrough.netio import UdpNetwork
from punchthrough.relay import RelayClient, RelayLimits, RelayServer
from punchthrough.relay.stream import (
    LinkError,
    Proxy,
    StreamListener,
    open_link,
    parse_stream_url,
    proxy_for,
    server_context,
)
from punchthrough.relay.stream.proxy import bypassed
from punchthrough.transport import DatagramMux

TINYPROXY = shutil.which("tinyproxy")
needs_tinyproxy = pytest.mark.skipif(
    TINYPROXY is None and not os.environ.get("CI"), reason="tinyproxy not installed"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def tinyproxy(
    tmp: Path, *, auth: tuple[str, str] | None = None, connect_port: int | None = None
) -> Iterator[str]:
    """A tinyproxy on 127.0.0.1 (foreground, our child): yields its http:// URL."""
    assert TINYPROXY is not None, "tinyproxy is in the Makefile's APT_PACKAGES"
    port = _free_port()
    lines = [
        f"Port {port}",
        "Listen 127.0.0.1",
        "Timeout 30",
        "MaxClients 20",
        "Allow 127.0.0.1",
        "LogLevel Info",
    ]
    if connect_port:  # no ConnectPort line: CONNECT to any port (0 would disable CONNECT)
        lines.append(f"ConnectPort {connect_port}")
    if os.geteuid() == 0:
        lines += ["User nobody", "Group nogroup"]
    if auth is not None:
        lines.append(f"BasicAuth {auth[0]} {auth[1]}")
    conf = tmp / "tinyproxy.conf"
    conf.write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen(
        [TINYPROXY, "-d", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        for _ in range(200):  # up within 2 s
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.1):
                break
            if proc.poll() is not None:
                raise RuntimeError(f"tinyproxy exited with {proc.returncode}")
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)


@contextlib.asynccontextmanager
async def relay() -> AsyncIterator[tuple[RelayServer, StreamListener, Identity]]:
    ident = Identity.generate()
    server = await RelayServer.start(
        UdpNetwork(), [("127.0.0.1", 0)], ident, limits=RelayLimits(shutdown_grace=0.05)
    )
    listener = await StreamListener.start(server, "127.0.0.1", 0, server_context(ident))
    try:
        yield server, listener, ident
    finally:
        await server.close()


# -- configuration ------------------------------------------------------------------------------
def test_proxy_urls_and_environment() -> None:
    p = Proxy.parse("http://u%40x:p%3Ass@proxy.example:3128")
    assert (p.host, p.port, p.username, p.password) == ("proxy.example", 3128, "u@x", "p:ss")
    assert Proxy.parse("proxy.example").port == 80
    with pytest.raises(ValueError):
        Proxy.parse("socks5://proxy.example:1080")
    env = {"HTTPS_PROXY": "http://p:8080", "NO_PROXY": "localhost,.corp.example,10.0.0.0/8"}
    assert proxy_for("relay.example", env=env) == Proxy("p", 8080)
    assert proxy_for("relay.corp.example", env=env) is None
    assert proxy_for("corp.example", env=env) is None
    assert proxy_for("10.1.2.3", env=env) is None
    assert proxy_for("relay.example", "http://q:1", env=env) == Proxy("q", 1)  # --proxy wins
    assert proxy_for("relay.example", env={"https_proxy": "http://l:2"}) == Proxy("l", 2)
    assert proxy_for("relay.example", env={}) is None
    assert bypassed("anything", "*")
    assert not bypassed("notcorp.example", "corp.example")


def test_connect_request_carries_basic_auth() -> None:
    req = Proxy("p", 1, "user", "pass").connect_request("198.51.100.20", 443)
    assert req.startswith(b"CONNECT 198.51.100.20:443 HTTP/1.1\r\nHost: 198.51.100.20:443\r\n")
    assert b"Proxy-Authorization: Basic dXNlcjpwYXNz\r\n" in req and req.endswith(b"\r\n\r\n")
    assert b"CONNECT [2001:db8::1]:443 " in Proxy("p", 1).connect_request("2001:db8::1", 443)


# -- a real proxy ------------------------------------------------------------------------------
@needs_tinyproxy
@pytest.mark.parametrize("kind", ["tls", "websocket"])
async def test_register_through_tinyproxy(tmp_path: Path, kind: str) -> None:
    async with relay() as (server, listener, ident):
        port = listener.address[1]
        url = f"tls://127.0.0.1:{port}" if kind == "tls" else f"wss://127.0.0.1:{port}/relay"
        with tinyproxy(tmp_path) as proxy_url:
            link = await open_link(
                parse_stream_url(url), pin=ident.peer_id, proxy=Proxy.parse(proxy_url)
            )
            client = await RelayClient.connect(
                DatagramMux(link), link.remote, Identity.generate(), timeout=5
            )
            try:
                assert client.transport == kind
                assert server.stats["registrations"] == 1
                # the relay saw the proxy's connection, not ours: same host here, but the link's
                # peer is the proxy
                assert link.remote[1] != port
            finally:
                await client.close()
                link.close()


@needs_tinyproxy
async def test_proxy_basic_auth_and_refusals(tmp_path: Path) -> None:
    async with relay() as (_server, listener, ident):
        target = parse_stream_url(f"tls://127.0.0.1:{listener.address[1]}")
        with tinyproxy(tmp_path, auth=("alice", "s3cret")) as url:
            base = Proxy.parse(url)
            with pytest.raises(LinkError, match="407"):
                await open_link(target, pin=ident.peer_id, proxy=base)
            wrong = Proxy(base.host, base.port, "alice", "nope")
            with pytest.raises(LinkError, match=r"40[17]"):  # tinyproxy 1.11 answers 401 here
                await open_link(target, pin=ident.peer_id, proxy=wrong)
            good = Proxy(base.host, base.port, "alice", "s3cret")
            link = await open_link(target, pin=ident.peer_id, proxy=good)
            link.close()
        # a proxy that only allows CONNECT to port 443 refuses our test port
        with tinyproxy(tmp_path, connect_port=443) as url, pytest.raises(LinkError, match="403"):
            await open_link(target, pin=ident.peer_id, proxy=Proxy.parse(url))


async def test_a_proxy_that_lies_fails_the_tls_handshake() -> None:
    """It answers 200 to CONNECT, then sends something that is not the relay's TLS."""

    async def liar(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\nHTTP/1.1 200 OK\r\n\r\nhi")
        await writer.drain()
        await asyncio.sleep(1)
        writer.close()

    server = await asyncio.start_server(liar, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(LinkError):
            await open_link(
                parse_stream_url("tls://relay.example:443"),
                pin=Identity.generate().peer_id,
                proxy=Proxy("127.0.0.1", port),
                timeout=3,
            )
    finally:
        server.close()


@needs_tinyproxy
async def test_endpoint_uses_https_proxy_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with relay() as (_server, listener, ident):
        entry = f"tls://127.0.0.1:{listener.address[1]},id={ident.peer_id}"
        with tinyproxy(tmp_path) as url:
            monkeypatch.setenv("HTTPS_PROXY", url)
            ep = await Endpoint.bind(
                Identity.generate(), relays=[entry], config=EndpointConfig(direct=False)
            )
            try:
                assert list(ep.relay_transports.values()) == ["tls"]
                (client,) = ep.relays.values()
                # the stream's other end is the proxy, not the relay's port
                assert client.relay_address == ("127.0.0.1", Proxy.parse(url).port)
            finally:
                await ep.close()
            # NO_PROXY names the relay: straight to it
            monkeypatch.setenv("NO_PROXY", "127.0.0.1")
            monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # nothing listens there
            ep = await Endpoint.bind(
                Identity.generate(), relays=[entry], config=EndpointConfig(direct=False)
            )
            await ep.close()
