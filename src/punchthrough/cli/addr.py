"""Parsing of ``IP:PORT`` command-line arguments."""

from __future__ import annotations

import ipaddress

import typer

from punchthrough.netio import Address


def parse_address(text: str) -> Address:
    """``198.51.100.1:3478`` or ``[2001:db8::1]:3478`` -> (ip, port); BadParameter otherwise."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not host:
        raise typer.BadParameter(f"{text!r} is not IP:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise typer.BadParameter(f"{host!r} in {text!r} is not an IP address") from None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise typer.BadParameter(f"port {port_text!r} in {text!r} is not 1-65535")
    return (str(ip), int(port_text))


def parse_addresses(texts: list[str] | None) -> list[Address]:
    return [parse_address(t) for t in texts or []]
