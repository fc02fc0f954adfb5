"""Batched UDP system calls: ``recvmmsg(2)`` and ``sendmmsg(2)`` through ctypes (Linux).

A Python ``recvfrom``/``sendto`` pair costs two system calls and two new objects per datagram;
``recvmmsg`` fills up to ``count`` preallocated slots in one call and ``sendmmsg`` sends a batch
in one, which is where a Python relay can close most of the gap to a C one (issue 16: 174k
datagrams/s per core with a plain loop, 246k with batches, on the reference machine).

Everything the kernel reads or writes lives in ``bytearray`` objects allocated once (message
headers, I/O vectors, addresses, payload slots), so the hot loop touches them through
``memoryview`` casts and ``struct.pack_into``, never through per-datagram ctypes objects.
``available()`` says whether this platform has the calls; callers keep a portable path.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import socket
import struct
import sys
from typing import Final

#: Datagrams per batch: 64 x 2 KiB = 128 KiB of slots. Larger batches amortise the system
#: call further but hold a burst longer before its first datagram is forwarded; at 200k/s a
#: batch of 64 is 0.3 ms.
BATCH: Final = 64
#: One slot holds any datagram we accept (the relay's largest frame is 1,441 bytes; a QUIC
#: datagram on our connections at most 1,500); longer ones are truncated (MSG_TRUNC) and
#: dropped by their length check.
SLOT: Final = 2048
#: sockaddr_in6 is 28 bytes, sockaddr_in 16 (netinet/in.h).
SOCKADDR_IN: Final = 16
SOCKADDR_IN6: Final = 28
#: recv/send flags (bits/socket.h): never block; the socket may be shared with asyncio.
MSG_DONTWAIT: Final = 0x40


class _Iovec(ctypes.Structure):
    _fields_ = (("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t))


class _Msghdr(ctypes.Structure):
    _fields_ = (
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    )


class _Mmsghdr(ctypes.Structure):
    _fields_ = (("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint32))


_MMSG: Final = ctypes.sizeof(_Mmsghdr)
_IOV: Final = ctypes.sizeof(_Iovec)
_NAMELEN_AT: Final = _Mmsghdr.msg_hdr.offset + _Msghdr.msg_namelen.offset
_LEN_AT: Final = _Mmsghdr.msg_len.offset
_IOV_FMT: Final = struct.Struct("PN")  # void *iov_base; size_t iov_len


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.recvmmsg.argtypes = (
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_void_p,
        )
        libc.sendmmsg.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int)
        libc.recvmmsg.restype = libc.sendmmsg.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


_LIBC: Final = _libc()


def available() -> bool:
    """Whether ``recvmmsg``/``sendmmsg`` can be called here (Linux with a C library)."""
    return _LIBC is not None


def _address_of(buf: bytearray) -> int:
    return ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf))


def sockaddr_length(family: int) -> int:
    return SOCKADDR_IN6 if family == socket.AF_INET6 else SOCKADDR_IN


def encode_sockaddr(family: int, addr: tuple[str, int]) -> bytes:
    """``(ip, port)`` as the kernel's sockaddr for a socket of ``family`` (an IPv4 address on
    an AF_INET6 socket becomes IPv4-mapped, RFC 4291 section 2.5.5.2)."""
    ip, port = addr
    if family == socket.AF_INET6:
        if ":" not in ip:
            ip = "::ffff:" + ip
        return (
            struct.pack("=H", socket.AF_INET6)
            + struct.pack("!HI", port, 0)
            + socket.inet_pton(socket.AF_INET6, ip)
            + bytes(4)
        )
    return (
        struct.pack("=H", socket.AF_INET)
        + struct.pack("!H", port)
        + socket.inet_aton(ip)
        + bytes(8)
    )


def decode_sockaddr(raw: bytes | bytearray | memoryview) -> tuple[str, int]:
    """A sockaddr as ``(ip text, port)``, spelled as asyncio reports it for that family."""
    family = struct.unpack_from("=H", raw)[0]
    port = struct.unpack_from("!H", raw, 2)[0]
    if family == socket.AF_INET6:
        return socket.inet_ntop(socket.AF_INET6, bytes(raw[8:24])), port
    return socket.inet_ntoa(bytes(raw[4:8])), port


class RecvBatch:
    """``count`` receive slots, their source addresses and lengths, filled by :meth:`recv`."""

    def __init__(self, family: int, count: int = BATCH, slot: int = SLOT) -> None:
        self.count = count
        self.slot = slot
        self.salen = sockaddr_length(family)
        self.data = bytearray(count * slot)
        self.view = memoryview(self.data)
        self.names = bytearray(count * SOCKADDR_IN6)
        self.names_view = memoryview(self.names)
        self._msgs = bytearray(count * _MMSG)
        self._iovs = bytearray(count * _IOV)
        data_at, names_at = _address_of(self.data), _address_of(self.names)
        self._msgs_at, iovs_at = _address_of(self._msgs), _address_of(self._iovs)
        hdrs = (_Mmsghdr * count).from_buffer(self._msgs)
        for i in range(count):
            _IOV_FMT.pack_into(self._iovs, i * _IOV, data_at + i * slot, slot)
            hdr = hdrs[i].msg_hdr
            hdr.msg_name = names_at + i * SOCKADDR_IN6
            hdr.msg_namelen = SOCKADDR_IN6
            hdr.msg_iov = iovs_at + i * _IOV
            hdr.msg_iovlen = 1
        del hdrs, hdr  # no exported buffer may outlive a resize (there is none, but be clean)
        u32 = memoryview(self._msgs).cast("I")
        self._u32 = u32
        #: ``lengths[i]``: bytes received into slot ``i`` by the last :meth:`recv`.
        self.lengths = u32[_LEN_AT // 4 :: _MMSG // 4]
        self._namelens_at = _NAMELEN_AT // 4

    def recv(self, sock: socket.socket) -> int:
        """Fill up to ``count`` slots without blocking; 0 when nothing is waiting. Raises
        ``OSError`` for a socket error other than "nothing to read"."""
        assert _LIBC is not None
        got = int(_LIBC.recvmmsg(sock.fileno(), self._msgs_at, self.count, MSG_DONTWAIT, None))
        if got < 0:
            err = ctypes.get_errno()
            if err in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                return 0
            raise OSError(err, f"recvmmsg: {errno.errorcode.get(err, err)}")
        u32, step, at = self._u32, _MMSG // 4, self._namelens_at
        for i in range(got):  # the kernel wrote each one's address length: reset for next time
            u32[at + i * step] = SOCKADDR_IN6
        return got

    def source(self, i: int) -> bytes:
        """Slot ``i``'s source sockaddr (the key the relay caches registrations by)."""
        at = i * SOCKADDR_IN6
        return bytes(self.names_view[at : at + self.salen])


#: UDP generic segmentation offload (linux/udp.h; Linux 4.18): one sendmsg carries several
#: datagrams of ``gso_size`` bytes to one destination, built and routed once by the kernel.
SOL_UDP: Final = 17
UDP_SEGMENT: Final = 103
#: The kernel's UDP_MAX_SEGMENTS (include/linux/udp.h; 64, 128 in newer kernels: we use the
#: lower), and the most bytes one message may carry: an IPv4 datagram's 65,535 less the IP and
#: UDP headers (65,507), rounded down.
GSO_MAX_SEGMENTS: Final = 64
GSO_MAX_BYTES: Final = 65_000
#: Errors that mean "this path cannot segment" (no checksum offload: EIO): GSO is switched off.
_GSO_ERRORS: Final = (errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP)
_CMSG_HDR: Final = struct.Struct("NiiH")  # cmsg_len, cmsg_level, cmsg_type, then the u16
_CMSG_SPACE: Final = (_CMSG_HDR.size + 7) // 8 * 8
_MSG_IOV_AT: Final = _Msghdr.msg_iov.offset
_MSG_IOVLEN_AT: Final = _Msghdr.msg_iovlen.offset
_MSG_CONTROL_AT: Final = _Msghdr.msg_control.offset
_MSG_CONTROLLEN_AT: Final = _Msghdr.msg_controllen.offset
_PTR: Final = struct.Struct("P")
_SIZE: Final = struct.Struct("N")


def gso_supported(sock: socket.socket) -> bool:
    """Whether the kernel knows UDP_SEGMENT for this socket (no datagram is sent)."""
    try:
        sock.setsockopt(SOL_UDP, UDP_SEGMENT, 0)
    except OSError:
        return False
    return True


class SendBatch:
    """Datagrams from the slots of ``source`` (each sent from where it was received,
    rewritten in place), queued by :meth:`add` and sent by one ``sendmmsg``.

    With ``gso``, consecutive datagrams of one length to one address become one message of
    several segments (UDP_SEGMENT), which a relay forwarding a call's equal-sized frames gets
    for nearly every batch; anything else is one message per datagram.
    """

    def __init__(self, source: RecvBatch, *, gso: bool = False) -> None:
        self.count = count = source.count
        self.salen = source.salen
        self.gso = gso
        #: Datagrams queued (segments), and messages they make.
        self.pending = 0
        self._messages = 0
        self._slot = source.slot
        self._data_at = _address_of(source.data)
        self._msgs = bytearray(count * _MMSG)
        self._iovs = bytearray(count * _IOV)
        self._names = bytearray(count * SOCKADDR_IN6)
        self._cmsgs = bytearray(count * _CMSG_SPACE)
        self._msgs_at = _address_of(self._msgs)
        self._iovs_at = _address_of(self._iovs)
        self._cmsgs_at = _address_of(self._cmsgs)
        names_at = _address_of(self._names)
        hdrs = (_Mmsghdr * count).from_buffer(self._msgs)
        for i in range(count):
            hdr = hdrs[i].msg_hdr
            hdr.msg_name = names_at + i * SOCKADDR_IN6
            hdr.msg_namelen = self.salen
        del hdrs, hdr
        self._names_view = memoryview(self._names)
        #: Per message: first segment, segments, segment length.
        self._first = [0] * count
        self._segments = [0] * count
        self._length = [0] * count
        self._last_sockaddr = b""

    def add(self, i: int, length: int, sockaddr: bytes) -> None:
        """Queue the first ``length`` bytes of receive slot ``i`` to ``sockaddr`` (a batch
        never holds more than the slots it was received into)."""
        seg = self.pending
        _IOV_FMT.pack_into(self._iovs, seg * _IOV, self._data_at + i * self._slot, length)
        self.pending = seg + 1
        m = self._messages - 1
        if (
            self.gso
            and m >= 0
            and self._length[m] == length
            and self._segments[m] < GSO_MAX_SEGMENTS
            and (self._segments[m] + 1) * length <= GSO_MAX_BYTES
            and sockaddr == self._last_sockaddr
        ):
            self._segments[m] += 1
            return
        m += 1
        self._first[m] = seg
        self._segments[m] = 1
        self._length[m] = length
        at = m * SOCKADDR_IN6
        self._names_view[at : at + self.salen] = sockaddr
        self._last_sockaddr = sockaddr
        self._messages = m + 1

    def _prepare(self, messages: int) -> None:
        msgs, cmsgs = self._msgs, self._cmsgs
        for m in range(messages):
            at = m * _MMSG
            k = self._segments[m]
            _PTR.pack_into(msgs, at + _MSG_IOV_AT, self._iovs_at + self._first[m] * _IOV)
            _SIZE.pack_into(msgs, at + _MSG_IOVLEN_AT, k)
            if k > 1:
                _CMSG_HDR.pack_into(
                    cmsgs, m * _CMSG_SPACE, _CMSG_HDR.size, SOL_UDP, UDP_SEGMENT, self._length[m]
                )
                _PTR.pack_into(msgs, at + _MSG_CONTROL_AT, self._cmsgs_at + m * _CMSG_SPACE)
                _SIZE.pack_into(msgs, at + _MSG_CONTROLLEN_AT, _CMSG_SPACE)
            else:
                _PTR.pack_into(msgs, at + _MSG_CONTROL_AT, 0)
                _SIZE.pack_into(msgs, at + _MSG_CONTROLLEN_AT, 0)

    def flush(self, sock: socket.socket) -> tuple[int, int]:
        """Send what is queued: ``(sent, failed)`` datagrams. A message the kernel refuses
        (full buffer, unreachable) is dropped, as UDP would, and the rest still go; a refusal
        that means "no segmentation here" also switches GSO off for later batches."""
        assert _LIBC is not None
        fd = sock.fileno()
        messages = self._messages
        self._prepare(messages)
        self.pending = self._messages = 0
        self._last_sockaddr = b""
        done = sent = failed = 0
        while done < messages:
            at = self._msgs_at + done * _MMSG
            n = int(_LIBC.sendmmsg(fd, at, messages - done, MSG_DONTWAIT))
            if n > 0:
                sent += sum(self._segments[done : done + n])
                done += n
                continue
            if self._segments[done] > 1 and ctypes.get_errno() in _GSO_ERRORS:
                self.gso = False  # this path cannot segment: send that run one by one
                ok = self._send_apart(sock, done)
                sent += ok
                failed += self._segments[done] - ok
            else:
                failed += self._segments[done]
            done += 1  # the first unsent one is refused: skip it, send the rest
        return sent, failed

    def _send_apart(self, sock: socket.socket, m: int) -> int:
        """Send message ``m``'s segments as separate datagrams; how many went."""
        at = m * SOCKADDR_IN6
        dest = decode_sockaddr(self._names_view[at : at + self.salen])
        ok = 0
        for seg in range(self._first[m], self._first[m] + self._segments[m]):
            address, length = _IOV_FMT.unpack_from(self._iovs, seg * _IOV)
            try:
                sock.sendto(ctypes.string_at(address, length), dest)
                ok += 1
            except OSError:
                pass
        return ok
