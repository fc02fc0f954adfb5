"""One line of the simulator's packet trace: what the world and its NAT boxes record."""

from __future__ import annotations

from dataclasses import dataclass

from punchthrough.netio import Address


@dataclass(frozen=True, slots=True)
class TraceEvent:
    """One line of the packet trace."""

    time: float
    kind: str  # send, deliver, drop, nat-out, nat-in, hairpin, portmap, map, expire, churn, ...
    node: str
    src: Address | None
    dst: Address | None
    size: int
    detail: str = ""

    def __str__(self) -> str:
        path = ""
        if self.src is not None and self.dst is not None:
            path = f"{self.src[0]}:{self.src[1]} -> {self.dst[0]}:{self.dst[1]} {self.size}B"
        text = f"{self.time:11.6f} {self.kind:<8} {self.node:<10} {path}"
        return f"{text}  {self.detail}".rstrip() if self.detail else text.rstrip()
