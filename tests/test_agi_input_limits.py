"""What an AGI peer sends is bounded in bytes before it is buffered, a line that is not
an env line ends the session at once, and odd values (a superscript digit, a call id of 25
digits, an answer longer than any Asterisk sends) cost a log line, never a traceback or
the call's events."""

import fcntl
import logging
import os
import random
import socket

import pytest
from support.settings import make_settings
from support.fake_asterisk import FakeCall, freepbx_calls
from support.fastagi import fastagi, running_server, status_of
from support.player import our_args, run_over_socket

from clinica_asterisk.agi.request import MAX_ENV_BYTES, EnvBlockError
from clinica_asterisk.agi.channel import LineStream
from clinica_asterisk.deadline import Deadline
from clinica_asterisk.hooks.stages import HookServices
from clinica_asterisk.devtools.simulation import ARGS, recorded_calls, with_fresh_ids

CALLS = freepbx_calls()
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def consumed_by_read_request(data: bytes) -> int:
    """How many bytes of ``data`` the stream took before it gave up on the env block.

    The bytes sit in a pipe large enough to hold them all, so what the stream did not
    read is still there to be counted."""
    read_fd, write_fd = os.pipe()
    try:
        fcntl.fcntl(write_fd, F_SETPIPE_SZ, 1 << 20)
        os.write(write_fd, data)
        stream = LineStream(read_fd, write_fd)
        with pytest.raises(EnvBlockError):
            stream.read_request(Deadline(5))
        os.set_blocking(read_fd, False)
        left = 0
        try:
            while True:
                chunk = os.read(read_fd, 65536)
                if not chunk:
                    break
                left += len(chunk)
        except BlockingIOError:
            pass
        return len(data) - left
    finally:
        os.close(read_fd)
        os.close(write_fd)


@pytest.mark.parametrize("line", [b"agi_arg_1: " + b"x" * 16000 + b"\n", b"agi_arg_1: x\n"])
def test_an_env_block_is_read_no_further_than_its_byte_limit(line):
    data = b"agi_request: clinica-agi\n" + line * ((900 * 1024) // len(line))
    assert consumed_by_read_request(data) <= MAX_ENV_BYTES + 4096


def test_an_endless_line_is_read_no_further_than_the_byte_limit():
    assert consumed_by_read_request(b"agi_request: " + b"x" * (900 * 1024)) <= MAX_ENV_BYTES + 4096


def test_lines_that_are_not_env_lines_end_the_session_at_the_first_one(crm, tmp_path, caplog):
    """An HTTP client that keeps its connection open is dropped at its first line, not
    after the session timeout."""
    caplog.set_level(logging.INFO)
    settings = make_settings(tmp_path / "data", crm_push_url=crm.url, fastagi_session_timeout_ms=60000)
    with running_server(settings) as server:
        with socket.create_connection(server.address, timeout=10) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: pbx\r\nUser-Agent: scanner\r\n")  # no blank line: it waits
            sock.settimeout(5)
            assert sock.recv(100) == b""  # closed by the server, long before the 60 s
    assert "outcome=DROPPED" in caplog.text and "not an AGI env block" in caplog.text


class LongAnswer(FakeCall):
    """Asterisk's side, but the first answer is a line longer than Asterisk ever sends."""

    def __init__(self):
        super().__init__()
        self.answered = 0

    def answer(self, session, line, local):
        self.answered += 1
        if self.answered == 1:
            return "200 result=1 (" + "x" * 40000 + ")"
        return super().answer(session, line, local)


def test_an_answer_line_over_the_limit_ends_the_session_with_a_log_line_not_a_traceback(crm, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    rings = [with_fresh_ids(recorded_calls()["in-801"], random.Random(n))[0] for n in range(2)]
    with running_server(make_settings(tmp_path / "data", crm_push_url=crm.url)) as server:
        fastagi(server.address, LongAnswer(), rings[0], ARGS["ring-in"])
        # The session ends; the worker is free for the next call.
        assert status_of(fastagi(server.address, FakeCall(), rings[1], ARGS["ring-in"])) == "SENT"
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    assert "outcome=FAILED" in caplog.text and "longer than" in caplog.text


@pytest.mark.parametrize("callid", ["²", "١٢٣", "1" * 25, "9" * 19, "0", "-5", " 12"])
def test_an_odd_call_id_on_the_channel_is_ignored_and_the_events_still_go_out(callid, crm, settings_for, caplog):
    services = HookServices.open(settings_for(crm.url))
    call = FakeCall()
    statuses = []
    for session in CALLS["in-801"]:
        session = session.with_args(our_args(session))
        session.variables["CLINICA_CALLID"] = callid
        statuses.append(run_over_socket(services, call, session)[0].status)
    assert statuses == ["SKIPPED", "SENT", "SENT", "SENT"]
    assert [p["requestType"] for p in crm.pushes()] == ["receivedTheCall", "answeredTheCall", "hangupTheCall"]
    assert not [r for r in caplog.records if r.exc_info]
