"""The README's library example runs as written, on loopback.

The code is read from README.md at test time, so the README and this test cannot drift apart:
the block runs as its own script (``python call.py RELAY PEER_ID``) against a relay and an
echoing peer started here on 127.0.0.1.
"""

from __future__ import annotations

import ast
import asyncio
import json
import os
import re
import sys
from pathlib import Path

from punchthrough.apps.echo import serve_endpoint
from punchthrough.endpoint import Endpoint
from punchthrough.identity import Identity
from punchthrough.netio import UdpNetwork
from punchthrough.relay import RelayLimits, RelayServer

ROOT = Path(__file__).resolve().parents[2]
LOOP_HOST = "127.0.0.1"

#: Runs the README block (stdin) as ``__main__`` with argv RELAY PEER_ID. The block binds the
#: wildcard address as a real caller would; here every socket is pinned to 127.0.0.1 instead,
#: and every destination is reported on stderr's last line, so the test can check that no
#: packet was meant for anywhere but loopback.
RUNNER = r"""
import json, sys
from punchthrough.netio import udp

_bind, _sendto, sent_to = udp.UdpSocket.bind.__func__, udp.UdpSocket.sendto, set()

async def loopback_bind(cls, host="0.0.0.0", port=0):
    return await _bind(cls, "127.0.0.1" if host in ("0.0.0.0", "") else host, port)

def recording_sendto(self, data, addr):
    sent_to.add(addr[0])
    _sendto(self, data, addr)

udp.UdpSocket.bind = classmethod(loopback_bind)
udp.UdpSocket.sendto = recording_sendto
code = sys.stdin.read()
sys.argv = ["call.py", *sys.argv[1:]]
try:
    exec(compile(code, "README.md", "exec"), {"__name__": "__main__"})
finally:
    print(json.dumps(sorted(sent_to)), file=sys.stderr)
"""


def library_example() -> str:
    """The first ``python`` block of the README's "Library" section."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^## Library\n.*?^```python\n(.*?)^```$", text, re.S | re.M)
    assert match, "README.md has no ```python block under '## Library'"
    return match.group(1)


async def test_readme_library_example_runs_on_loopback() -> None:
    code = library_example()
    assert "asyncio.run(" in code and "import" in code  # a script, not a fragment
    peer = Identity.generate()
    relay = await RelayServer.start(
        UdpNetwork(), [(LOOP_HOST, 0)], limits=RelayLimits(shutdown_grace=0.05)
    )
    try:
        relay_text = "{}:{}".format(*relay.addresses[0])
        async with Endpoint.bind(peer, relays=[relay_text], host=LOOP_HOST) as ep:
            echo = asyncio.ensure_future(serve_endpoint(ep))
            try:
                paths = [str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]
                env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
                proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-c",
                    RUNNER,
                    relay_text,
                    str(peer.peer_id),
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    env=env,
                )
                out, err = await asyncio.wait_for(proc.communicate(code.encode()), 60)
            finally:
                echo.cancel()
                await asyncio.gather(echo, return_exceptions=True)
    finally:
        await relay.close()
    stdout, stderr = out.decode(), err.decode()
    assert proc.returncode == 0, stderr
    assert json.loads(stderr.splitlines()[-1]) == [LOOP_HOST]
    lines = stdout.splitlines()
    assert lines[0] == "datagram: b'frame 1'"
    assert lines[1] == "stream: b'hello'"
    assert lines[2] in ("path: relay", "path: direct")
    report = ast.literal_eval(lines[3])
    assert report["relay"] == f"relay {relay_text}" and report["stages"], report
