"""The one session runner of script mode and FastAGI mode, over a real socket pair."""

import socket
import threading

import pytest
from support.fake_asterisk import FakeCall, RecordedSession, serve_session

from clinica_asterisk.agi.channel import AgiChannel, LineStream
from clinica_asterisk.agi.request import EnvBlockError
from clinica_asterisk.deadline import Deadline
from clinica_asterisk.hooks.session import NoSession, SetupFailed, run_session


def test_a_session_whose_services_cannot_be_set_up_still_reports_failed(pair):
    asterisk, script = pair
    call = FakeCall()
    session = RecordedSession(env=["agi_request: clinica-agi", "agi_arg_1: ring-in", "agi_arg_2: 0443334000"],
                              variables={})
    peer = threading.Thread(target=serve_session, args=(call, session, asterisk.fileno(), asterisk.fileno()))
    peer.start()
    asked = []

    def deadline_for(stage):
        asked.append(stage)
        return Deadline(2)

    def cannot_open():
        raise SetupFailed("configuration: CLINICA_HOOK_DEADLINE_MS: not a number")

    result = run_session(LineStream(script.fileno(), script.fileno()), Deadline(5), deadline_for, cannot_open)
    script.shutdown(socket.SHUT_RDWR)
    peer.join(5)
    assert asked == ["ring-in"]
    assert (result.stage, result.status, result.detail) == \
        ("ring-in", "FAILED", "configuration: CLINICA_HOOK_DEADLINE_MS: not a number")
    assert call.status_of("") == "FAILED"


def test_garbage_instead_of_an_env_block_is_no_session(pair):
    asterisk, script = pair
    asterisk.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    with pytest.raises(NoSession) as raised:
        run_session(LineStream(script.fileno(), script.fileno()), Deadline(5),
                    lambda stage: pytest.fail("no stage without a request"), lambda: pytest.fail("no services"))
    assert isinstance(raised.value.__cause__, EnvBlockError)


def test_a_deadline_cannot_be_moved_and_a_view_of_the_channel_has_its_own(pair):
    _, script = pair
    deadline = Deadline(5)
    with pytest.raises(AttributeError):
        deadline.at = 0
    channel = AgiChannel(LineStream(script.fileno(), script.fileno()), deadline)
    grace = Deadline(0.1)
    view = channel.within(grace)
    assert (channel.deadline, view.deadline) == (deadline, grace)
    with pytest.raises(AttributeError):
        channel.deadline = grace
