"""One end of the wire: validated receive, thread-safe send, increasing message ids."""
import itertools
import threading
from typing import BinaryIO, Dict, Optional, Tuple

from device_agent.protocol import framing, messages


class Peer(object):
    def __init__(self, reader: BinaryIO, writer: BinaryIO,
                 max_payload: int = framing.MAX_PAYLOAD_BYTES) -> None:
        self.reader = reader
        self.writer = writer
        self.max_payload = max_payload
        self._send_lock = threading.Lock()
        self._ids = itertools.count(1)

    def send(self, kind: str, payload: bytes = b"", **fields) -> int:
        """Send a message; returns its id (replies name it in ``reply_to``)."""
        msg_id = next(self._ids)
        self.send_header(messages.make(kind, msg_id, **fields), payload)
        return msg_id

    def send_header(self, header: Dict[str, object], payload: bytes = b"") -> None:
        data = framing.encode(messages.validate(header), payload)
        with self._send_lock:
            self.writer.write(data)
            self.writer.flush()

    def receive(self) -> Optional[Tuple[Dict[str, object], bytes]]:
        """The next validated (header, payload), or None when the peer closed the stream."""
        frame = framing.read_frame(self.reader, self.max_payload)
        if frame is None:
            return None
        header, payload = frame
        return messages.validate(header), payload
