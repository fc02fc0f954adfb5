"""Prometheus text of relay stats, and the tiny HTTP responder (/metrics, /healthz, errors)."""

from __future__ import annotations

import asyncio

from punchthrough.relay.metrics import MetricsServer, render


def test_render_counters_gauges_and_drops_by_reason() -> None:
    text = render({"clients": 3, "frames_out": 10, "dropped_rate": 2, "dropped_bad_token": 1})
    lines = text.splitlines()
    assert "# TYPE punchthrough_relay_clients gauge" in lines
    assert "punchthrough_relay_clients 3" in lines
    assert "punchthrough_relay_frames_out_total 10" in lines
    assert 'punchthrough_relay_frames_dropped_total{reason="rate"} 2' in lines
    assert 'punchthrough_relay_frames_dropped_total{reason="bad_token"} 1' in lines
    assert lines.count("# TYPE punchthrough_relay_frames_dropped_total counter") == 1
    assert text.endswith("\n")


async def _get(port: int, request: bytes) -> tuple[str, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    writer.write_eof()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = data.decode().partition("\r\n\r\n")
    return head.splitlines()[0], body


async def test_http_pages_and_errors() -> None:
    healthy = [True]
    server = MetricsServer(
        lambda: {"clients": 1}, lambda: (healthy[0], "ok" if healthy[0] else "x")
    )
    _, port = await server.start("127.0.0.1", 0)
    try:
        status, body = await _get(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == "HTTP/1.0 200 OK" and "punchthrough_relay_clients 1" in body
        assert "process_cpu_seconds_total" in body
        assert (await _get(port, b"GET /healthz HTTP/1.0\r\n\r\n"))[0].endswith("200 OK")
        healthy[0] = False
        assert "503" in (await _get(port, b"GET /healthz HTTP/1.0\r\n\r\n"))[0]
        assert "404" in (await _get(port, b"GET /nope HTTP/1.0\r\n\r\n"))[0]
        assert "405" in (await _get(port, b"POST /metrics HTTP/1.0\r\n\r\n"))[0]
        assert "400" in (await _get(port, b"GET /metrics"))[0]  # no end of head, then EOF
    finally:
        await server.close()
