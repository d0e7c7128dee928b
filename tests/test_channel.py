"""The AGI channel over a real socket pair: quoting, HANGUP lines, deadlines, limits."""

import socket
import threading

import pytest
from support.fake_asterisk import FakeCall, asterisk22_sessions, serve_session, split_command

from clinica_asterisk.agi.request import EnvBlockError
from clinica_asterisk.agi.channel import AgiChannel, ChannelClosed, LineStream, quote_argument
from clinica_asterisk.deadline import Deadline, DeadlineExceeded


@pytest.mark.parametrize("value, parsed", [
    ("plain", "plain"),
    ('say "hi"', 'say "hi"'),
    ("back\\slash", "back\\slash"),
    ("two\nlines\rEXEC Dial", "two lines EXEC Dial"),
    ("Клієнт (VIP)", "Клієнт (VIP)"),
])
def test_quoted_argument_reads_back_as_one_argument(value, parsed):
    assert split_command(f"SET VARIABLE X {quote_argument(value)}") == ["SET", "VARIABLE", "X", parsed]


def channel_on(sock, seconds=5.0):
    stream = LineStream(sock.fileno(), sock.fileno())
    return AgiChannel(stream, Deadline(seconds))


def test_recorded_fastagi_session_with_hangup_keeps_answering():
    sessions = asterisk22_sessions("fastagi-sessions.jsonl")
    sleeping = next(s for s in sessions if s.unsolicited_hangup_after is not None)
    asterisk, script = socket.socketpair()
    served = {}
    peer = threading.Thread(target=lambda: served.update(
        conv=serve_session(FakeCall(), sleeping, asterisk.fileno(), asterisk.fileno())))
    peer.start()
    stream = LineStream(script.fileno(), script.fileno())
    channel = AgiChannel(stream, Deadline(5))
    request = stream.read_request(Deadline(5))
    assert request.network and request.script == "sleep"
    values = [channel.read([name])[name] for name in ("UNIQUEID", "${CDR(linkedid)}", "${CDR(billsec)}", "UNIQUEID")]
    assert channel.hung_up
    assert values == ["1795713186.31", "1795713186.30", "0", "1795713186.31"]
    script.close()
    peer.join(5)
    asterisk.close()


def test_unknown_command_and_dead_channel_do_not_break_the_session(pair):
    asterisk, script = pair
    channel = channel_on(script)
    asterisk.sendall(b"510 Invalid or unknown command\n200 result=1\n")
    assert channel.set("X", "1") is False
    assert channel.set("Y", "2") is True


def test_a_peer_that_stalls_costs_at_most_the_deadline(pair):
    asterisk, script = pair
    channel = channel_on(script, seconds=0.2)
    with pytest.raises(DeadlineExceeded):
        channel.read(["UNIQUEID"])
    assert asterisk.recv(100).startswith(b'GET VARIABLE "UNIQUEID"')


def test_half_an_env_block_then_silence_is_dropped(pair):
    asterisk, script = pair
    stream = LineStream(script.fileno(), script.fileno())
    asterisk.sendall(b"agi_request: clinica-agi\nagi_channel: PJSIP/8")
    with pytest.raises(DeadlineExceeded):
        stream.read_request(Deadline(0.2))


def test_an_endless_line_is_refused(pair):
    asterisk, script = pair
    stream = LineStream(script.fileno(), script.fileno())
    asterisk.sendall(b"agi_request: " + b"x" * 70000)
    with pytest.raises(EnvBlockError):
        stream.read_request(Deadline(5))


def test_closed_stream_is_reported(pair):
    asterisk, script = pair
    channel = channel_on(script)
    asterisk.close()
    with pytest.raises(ChannelClosed):
        channel.read(["UNIQUEID"])


def test_garbage_instead_of_an_env_block(pair):
    asterisk, script = pair
    stream = LineStream(script.fileno(), script.fileno())
    asterisk.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    with pytest.raises(EnvBlockError):
        stream.read_request(Deadline(5))
