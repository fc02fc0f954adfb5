"""A node's access link: one-way latency, jitter and loss, drawn per packet by the world."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class Link:
    """A host's (or NAT's WAN) access link: one-way latency, uniform jitter, loss probability."""

    latency: float = 0.005
    jitter: float = 0.0
    loss: float = 0.0

    def __post_init__(self) -> None:
        if self.latency < 0 or self.jitter < 0 or not 0.0 <= self.loss <= 1.0:
            raise ValueError(f"bad link parameters {self}")


NO_DELAY: Final = Link(0.0)
