"""coturn's `turnutils_natdiscovery` as an independent RFC 5780 classifier for lab hosts.

`turnutils_natdiscovery -m -f IP` prints a "-= Mapping Behavior Discovery =-" and a
"-= Filtering Behavior Discovery =-" section, each ending with a verdict line such as
"NAT with Address Dependent Mapping!" or "STUN receive timeout.." when nothing answered.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field

from punchthrough.lab.addresses import STUN_PORT, Address
from punchthrough.lab.proc import LabError, child_env, ns_argv
from punchthrough.lab.profiles import AD, APD, EI, UNKNOWN, Behaviour

NATDISCOVERY = "turnutils_natdiscovery"
# A run against an APDF NAT waits out two ~3 s receive timeouts; allow a generous bound.
DEFAULT_TIMEOUT = 30.0

_MAPPING_HDR = "-= Mapping Behavior Discovery =-"
_FILTERING_HDR = "-= Filtering Behavior Discovery =-"
_VERDICTS: tuple[tuple[str, Behaviour], ...] = (
    ("Address and Port Dependent", APD),
    ("Address Dependent", AD),
    ("Endpoint Independent", EI),
)
_REFLEXIVE = re.compile(r"UDP reflexive addr: (\d+\.\d+\.\d+\.\d+):(\d+)")


@dataclass(frozen=True)
class NatDiscoveryResult:
    """What natdiscovery concluded, in our vocabulary. `nat` is False for "No NAT!"."""

    mapping: Behaviour
    filtering: Behaviour
    nat: bool | None
    reflexive: tuple[Address, ...] = ()
    raw: str = field(default="", repr=False)


def _verdict(section: str, kind: str) -> Behaviour:
    for line in section.splitlines():
        line = line.strip()
        if not line.endswith(f"{kind}!") and not line.endswith(f"{kind})"):
            continue
        for phrase, value in _VERDICTS:
            if f"{phrase} {kind}" in line:
                return value
    return UNKNOWN


def parse_natdiscovery(output: str) -> NatDiscoveryResult:
    """Parse `turnutils_natdiscovery -m -f` output (either section may be missing)."""
    mapping_text = filtering_text = ""
    if _MAPPING_HDR in output:
        mapping_text = output.split(_MAPPING_HDR, 1)[1].split(_FILTERING_HDR, 1)[0]
    if _FILTERING_HDR in output:
        filtering_text = output.split(_FILTERING_HDR, 1)[1].split(_MAPPING_HDR, 1)[0]
    mapping = _verdict(mapping_text, "Mapping")
    nat: bool | None = None
    if "No NAT!" in mapping_text:
        nat = False
    elif mapping != UNKNOWN:
        nat = True
    reflexive = tuple((ip, int(port)) for ip, port in _REFLEXIVE.findall(output))
    return NatDiscoveryResult(
        mapping, _verdict(filtering_text, "Filtering"), nat, reflexive, output
    )


def natdiscovery_argv(server: str, port: int = STUN_PORT, local_ip: str | None = None) -> list[str]:
    """`-L local_ip` binds the host's own address: without it natdiscovery compares the mapped
    address with 0.0.0.0 and cannot say "No NAT!" for a host with a public address."""
    local = ["-L", local_ip] if local_ip else []
    return [NATDISCOVERY, "-m", "-f", "-p", str(port), *local, server]


def run_natdiscovery(
    ns: str,
    server: str,
    port: int = STUN_PORT,
    timeout: float = DEFAULT_TIMEOUT,
    local_ip: str | None = None,
) -> NatDiscoveryResult:
    """Classify the NAT in front of namespace `ns` against an RFC 5780 server (e.g. coturn)."""
    return run_natdiscovery_many([ns], server, port, timeout, [local_ip])[0]


def run_natdiscovery_many(
    namespaces: Sequence[str],
    server: str,
    port: int = STUN_PORT,
    timeout: float = DEFAULT_TIMEOUT,
    local_ips: Sequence[str | None] | None = None,
) -> list[NatDiscoveryResult]:
    """Run natdiscovery in several namespaces at once (each run waits out its own timeouts)."""
    procs: list[subprocess.Popen[str]] = []
    locals_ = list(local_ips) if local_ips is not None else [None] * len(namespaces)
    if len(locals_) != len(namespaces):
        raise ValueError("local_ips must match namespaces")
    try:
        for ns, local_ip in zip(namespaces, locals_, strict=True):
            procs.append(
                subprocess.Popen(
                    ns_argv(ns, natdiscovery_argv(server, port, local_ip)),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    text=True,
                    env=child_env(),
                )
            )
        results = []
        for ns, proc in zip(namespaces, procs, strict=True):
            try:
                out, _ = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired as exc:
                raise LabError(f"{NATDISCOVERY} in {ns} did not finish in {timeout}s") from exc
            results.append(parse_natdiscovery(out))
        return results
    except FileNotFoundError as exc:
        raise LabError(f"{NATDISCOVERY} not found (Debian package coturn): {exc}") from exc
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
