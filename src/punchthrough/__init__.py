"""punchthrough: direct, end-to-end encrypted QUIC connections through any NAT."""

__version__ = "0.1.0"
