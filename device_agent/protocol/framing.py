"""Length-prefixed frames: a JSON header and an optional binary payload (images, archives).

Wire format, big-endian::

    u32 header_length | u64 payload_length | header (UTF-8 JSON object) | payload

Every read loops until exactly N bytes have arrived; a clean end of stream *between* frames
is EOF (``None``), anywhere else it is an error, as are oversized or malformed frames.
"""
import json
import struct
from typing import BinaryIO, Dict, Optional, Tuple

PREFIX = struct.Struct(">IQ")
MAX_HEADER_BYTES = 1 << 20
MAX_PAYLOAD_BYTES = 256 << 20


class ProtocolError(Exception):
    """The peer sent bytes that are not a well-formed frame or message."""


def _read_exact(stream: BinaryIO, count: int) -> bytes:
    chunks = []
    remaining = count
    while remaining:
        chunk = stream.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def encode(header: Dict[str, object], payload: bytes = b"") -> bytes:
    data = json.dumps(header, separators=(",", ":"), allow_nan=False).encode("utf-8")
    if len(data) > MAX_HEADER_BYTES:
        raise ProtocolError("header of %d bytes exceeds %d" % (len(data), MAX_HEADER_BYTES))
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ProtocolError("payload of %d bytes exceeds %d" % (len(payload), MAX_PAYLOAD_BYTES))
    return PREFIX.pack(len(data), len(payload)) + data + payload


def write_frame(stream: BinaryIO, header: Dict[str, object], payload: bytes = b"") -> None:
    stream.write(encode(header, payload))
    stream.flush()


def read_frame(stream: BinaryIO,
               max_payload: int = MAX_PAYLOAD_BYTES) -> Optional[Tuple[Dict[str, object], bytes]]:
    """The next (header, payload), or None at a clean end of stream."""
    prefix = _read_exact(stream, PREFIX.size)
    if not prefix:
        return None
    if len(prefix) < PREFIX.size:
        raise ProtocolError("stream ended inside a frame prefix")
    header_len, payload_len = PREFIX.unpack(prefix)
    if header_len > MAX_HEADER_BYTES:
        raise ProtocolError("header length %d exceeds %d" % (header_len, MAX_HEADER_BYTES))
    if payload_len > max_payload:
        raise ProtocolError("payload length %d exceeds %d" % (payload_len, max_payload))
    raw = _read_exact(stream, header_len)
    if len(raw) < header_len:
        raise ProtocolError("stream ended inside a frame header")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError("frame header is not JSON: %s" % exc) from exc
    if not isinstance(header, dict):
        raise ProtocolError("frame header is not a JSON object")
    payload = _read_exact(stream, payload_len)
    if len(payload) < payload_len:
        raise ProtocolError("stream ended inside a frame payload")
    return header, payload
