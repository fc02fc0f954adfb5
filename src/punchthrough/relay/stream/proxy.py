"""HTTP proxies for stream links: ``HTTPS_PROXY`` / ``https_proxy`` / ``NO_PROXY`` and an
explicit ``--proxy URL``, through an HTTP CONNECT tunnel (RFC 9110 section 9.3.6) with
optional basic authentication (RFC 7617).

The exchange is one request and the response's head: the request line with ``Host`` and
``Proxy-Authorization``; the response's status line decides (any 2xx opens the tunnel,
anything else is a :class:`ProxyError` naming the status), its header lines are read and
discarded up to the empty line, bounded by :data:`MAX_RESPONSE_HEAD` bytes and the caller's
timeout. A proxy that says 200 and then lies fails the TLS handshake that follows (typed
there). Only ``http://`` proxies: the tunnel carries our TLS, so the proxy sees the relay's
name and port, never the traffic.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote, urlsplit

#: Bytes of the proxy's response head we read (status line and headers); squid and tinyproxy
#: send a few hundred.
MAX_RESPONSE_HEAD: Final = 8 * 1024
#: Port of an ``http://`` proxy URL without one (RFC 9110 section 4.2.1).
DEFAULT_PROXY_PORT: Final = 80


class ProxyError(ConnectionError):
    """The proxy refused the tunnel (its status is in ``status``) or did not speak HTTP."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Proxy:
    """An HTTP proxy: where it is, and its basic-auth credentials if any."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> Proxy:
        """``http://[user:pass@]host[:port]`` (a bare ``host:port`` means http)."""
        text = url.strip()
        if "://" not in text:
            text = "http://" + text
        parts = urlsplit(text)
        if parts.scheme != "http":
            raise ValueError(f"proxy {url!r}: only http:// proxies (CONNECT) are supported")
        if not parts.hostname:
            raise ValueError(f"proxy {url!r} has no host")
        try:
            port = parts.port or DEFAULT_PROXY_PORT
        except ValueError:
            raise ValueError(f"proxy {url!r} has a bad port") from None
        user = unquote(parts.username) if parts.username is not None else None
        password = unquote(parts.password) if parts.password is not None else None
        return cls(parts.hostname, port, user, password)

    def connect_request(self, host: str, port: int) -> bytes:
        """The CONNECT request for ``host:port``."""
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
        if self.username is not None:
            token = f"{self.username}:{self.password or ''}".encode()
            lines.append("Proxy-Authorization: Basic " + base64.b64encode(token).decode())
        return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def bypassed(host: str, no_proxy: str) -> bool:
    """Whether ``NO_PROXY`` names ``host``: ``*``, a domain (``example.org`` and
    ``.example.org`` match it and its subdomains), an IP, or a CIDR block."""
    host = host.strip("[]").lower()
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    for raw in no_proxy.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        if ip is not None:
            try:
                if ip in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                pass
            continue
        entry = entry.lstrip(".")
        if host == entry or host.endswith("." + entry):
            return True
    return False


def proxy_for(
    host: str, explicit: str | None = None, env: Mapping[str, str] | None = None
) -> Proxy | None:
    """The proxy to reach ``host`` through: ``explicit`` (``--proxy``) wins, then
    ``HTTPS_PROXY``/``https_proxy``, unless ``NO_PROXY``/``no_proxy`` names the host."""
    if explicit:
        return Proxy.parse(explicit)
    env = os.environ if env is None else env
    url = env.get("HTTPS_PROXY") or env.get("https_proxy")
    if not url:
        return None
    no_proxy = env.get("NO_PROXY") or env.get("no_proxy") or ""
    if bypassed(host, no_proxy):
        return None
    return Proxy.parse(url)


async def open_tunnel(
    proxy: Proxy, host: str, port: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP stream to ``host:port`` through ``proxy``. The caller bounds the time; on any
    failure the connection to the proxy is closed and :class:`ProxyError` (or ``OSError``)
    raised."""
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port, limit=MAX_RESPONSE_HEAD)
    try:
        writer.write(proxy.connect_request(host, port))
        head = await _read_head(reader)
        status = _status(head)
        if not 200 <= status < 300:
            raise ProxyError(
                f"proxy {proxy.host}:{proxy.port} refused CONNECT {host}:{port}: {status}",
                status,
            )
    except BaseException:
        writer.transport.abort()
        raise
    return reader, writer


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    """The response head up to its empty line, at most :data:`MAX_RESPONSE_HEAD` bytes (the
    tunnelled bytes after it stay in ``reader``)."""
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise ProxyError("proxy response head too large") from None
    except asyncio.IncompleteReadError as exc:
        raise ProxyError(f"proxy closed the connection ({len(exc.partial)} bytes)") from None


def _status(head: bytes) -> int:
    line = head.split(b"\r\n", 1)[0]
    parts = line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise ProxyError(f"proxy did not answer HTTP: {line[:80]!r}")
    return int(parts[1])
