"""The unit every hard-NAT plan is expressed in: a send at a time offset, from a socket, to an
address. Plans are lists of these; the asyncio adapter turns offsets into ``loop.call_at``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from punchthrough.netio import Address

#: What a send is for (traversal report, counters): ``sample`` = a STUN Binding to a server
#: (port sample), ``target`` = the predicted flow's check, ``check`` = a check to a predicted
#: port, ``open`` / ``refresh`` = birthday pinhole, ``probe`` = birthday probe.
Purpose = Literal["sample", "target", "check", "open", "refresh", "probe"]


@dataclass(frozen=True, slots=True, order=True)
class Send:
    """Send one check (or STUN sample) ``t_offset`` seconds after the plan's start.

    ``socket`` indexes the plan's sockets: 0 is the endpoint's main socket, 1.. are extra
    sockets the plan asks the adapter to open (birthday hard side, prediction target flow).
    """

    t_offset: float
    socket: int
    dest: Address
    purpose: Purpose = "check"
