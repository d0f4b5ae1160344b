"""The API <-> worker wire: byte-exact frames, hostile streams, strict messages."""
import io
import struct

import pytest

from device_agent import jobspec
from device_agent.errors import InvalidInput
from device_agent.protocol import framing, messages
from device_agent.protocol.framing import ProtocolError

V = messages.PROTOCOL_VERSION


def test_frame_bytes_are_exactly_the_documented_layout():
    header = messages.make("cancel", 7, job_id="j1")
    data = framing.encode(header, b"\x01\x02")
    body = b'{"v":5,"kind":"cancel","id":7,"job_id":"j1"}'
    assert data == struct.pack(">IQ", len(body), 2) + body + b"\x01\x02"


def test_frames_round_trip_and_end_cleanly():
    stream = io.BytesIO()
    framing.write_frame(stream, messages.make("status", 1))
    framing.write_frame(stream, messages.make("predict", 2, domain="d", adapter_dir="/a",
                                              top_k=3, parts=[2, 1]), b"abc")
    stream.seek(0)
    first = framing.read_frame(stream)
    header, payload = framing.read_frame(stream)
    assert first == (messages.make("status", 1), b"")
    assert messages.split_parts(messages.validate(header), payload) == [b"ab", b"c"]
    assert framing.read_frame(stream) is None


def test_a_stream_cut_anywhere_inside_a_frame_is_an_error():
    data = framing.encode(messages.make("cancel", 1, job_id="x"), b"payload")
    for cut in range(1, len(data)):
        with pytest.raises(ProtocolError):
            framing.read_frame(io.BytesIO(data[:cut]))


@pytest.mark.parametrize("data", [
    struct.pack(">IQ", framing.MAX_HEADER_BYTES + 1, 0),
    struct.pack(">IQ", 2, framing.MAX_PAYLOAD_BYTES + 1) + b"{}",
    struct.pack(">IQ", 4, 0) + b"\xff\xfe{}",
    struct.pack(">IQ", 2, 0) + b"[]",
])
def test_hostile_frames_are_refused(data):
    with pytest.raises(ProtocolError):
        framing.read_frame(io.BytesIO(data))


@pytest.mark.parametrize("header,message", [
    ({"v": V + 1, "kind": "status", "id": 1}, "protocol version"),
    ({"v": V, "kind": "progress", "id": 0, "job_id": "j", "event": {}}, "unknown message kind"),
    ({"v": V, "kind": "job_done", "id": 0, "job_id": "j", "state": "finished", "report": {},
      "error": {}}, "job_done.state"),
    ({"v": V, "kind": "job_done", "id": 0, "job_id": "j", "state": "succeeded",
      "error": {}}, "lacks 'report'"),
    ({"v": V, "kind": "rm -rf", "id": 1}, "unknown message kind"),
    ({"v": V, "kind": "status", "id": -1}, "non-negative"),
    ({"v": V, "kind": "status", "id": True}, "non-negative"),
    ({"v": V, "kind": "cancel", "id": 1}, "lacks 'job_id'"),
    ({"v": V, "kind": "cancel", "id": 1, "job_id": 5}, "must be str"),
    ({"v": V, "kind": "predict", "id": 1, "domain": "d", "adapter_dir": "a", "top_k": False,
      "parts": []}, "must be int"),
    ({"v": V, "kind": "status", "id": 1, "extra": 1}, "unknown fields"),
    ({"v": V, "kind": "forget", "id": 1}, "lacks 'domain'"),
])
def test_malformed_messages_are_refused(header, message):
    with pytest.raises(ProtocolError, match=message):
        messages.validate(header)


def test_the_protocol_version_is_pinned():
    # 4: job_event and job_done replace progress, and the export request; 5: train's
    # warm_from (issue 14); a new kind or required field needs a bump
    assert V == 5 and "forget" in messages.REQUESTS and "export" in messages.REQUESTS
    assert "warm_from" in messages.SPECS["train"]
    assert "job_done" in messages.SPECS and "progress" not in messages.SPECS


def test_parts_must_add_up():
    header = messages.make("predict", 1, domain="d", adapter_dir="a", top_k=1, parts=[4, -1])
    with pytest.raises(ProtocolError):
        messages.split_parts(header, b"abc")


def test_errors_cross_the_wire_with_their_code():
    assert messages.error_reply(3, InvalidInput("bad"))["code"] == "invalid_input"
    assert messages.error_reply(3, ProtocolError("x"))["code"] == "protocol_error"
    reply = messages.error_reply(4, ZeroDivisionError("boom"))
    assert reply["code"] == "internal_error" and "boom" in reply["message"]
    assert messages.validate(reply) is reply


def test_a_job_ends_in_one_job_done_per_outcome():
    for state in messages.JOB_OUTCOMES:
        done = messages.make("job_done", 0, job_id="j", state=state, report={}, error={})
        assert messages.validate(done)["state"] == state
    assert set(messages.JOB_OUTCOMES) <= set(jobspec.TERMINAL_STATES)
