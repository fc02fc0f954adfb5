"""One UDP socket per endpoint, demultiplexed (and, later, the path manager)."""

from punchthrough.transport.demux import (
    QUIC_CID_LENGTH,
    DatagramMux,
    PacketKind,
    classify,
    quic_destination_cid,
)

__all__ = ["QUIC_CID_LENGTH", "DatagramMux", "PacketKind", "classify", "quic_destination_cid"]
