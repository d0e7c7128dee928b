"""The API's connection and worker limits, over real sockets: idle or half-sent
connections filling every slot, and click-to-calls stuck on a manager that never answers,
cannot keep a signed request waiting."""

import http.client
import json
import socket
import threading
import time

import pytest
from support.api import api_settings, running_server, signed_body
from support.fake_ami import FakeAmi
from support.faults import figure

from clinica_asterisk.api.errors import Code
from clinica_asterisk.api.server import CONNECTION_LIMIT, THREADS

CALL_DETAILS = "/api/2.0/stats/call-details.json"
EXT_TO_PHONE = "/api/2.0/calls/ext-to-phone.json"
PATIENCE_S = 5.0  # the client's time limit: before these limits the wait was 29 s


def signed_post(address, path, params, timeout_s=PATIENCE_S):
    """(answer, seconds it took) for one signed request on a fresh connection."""
    started = time.monotonic()
    conn = http.client.HTTPConnection(*address, timeout=timeout_s)
    try:
        conn.request("POST", path, body=json.dumps(signed_body(params)),
                     headers={"Content-Type": "application/json"})
        answer = json.loads(conn.getresponse().read())
    finally:
        conn.close()
    return answer, time.monotonic() - started


def hold_connections(address, count, half_sent):
    """``count`` connections that say nothing, and ``half_sent`` more that sent half a
    request and stopped."""
    held = []
    for n in range(count + half_sent):
        sock = socket.create_connection(address, timeout=PATIENCE_S)
        if n >= count:
            sock.sendall(b"POST /api/2.0/stats/call-details.json HTTP/1.1\r\nHost: pbx\r\nContent-Le")
        held.append(sock)
    return held


@pytest.mark.parametrize("idle, half_sent", [(CONNECTION_LIMIT, 0), (CONNECTION_LIMIT // 2, CONNECTION_LIMIT // 2),
                                             (CONNECTION_LIMIT * 2, 0)])
def test_connections_filling_every_slot_do_not_keep_a_signed_request_waiting(idle, half_sent, tmp_path):
    with running_server(api_settings(tmp_path)) as server:
        held = hold_connections(server.address, idle, half_sent)
        try:
            answer, _ = signed_post(server.address, CALL_DETAILS, {"generalCallID": [1]})
            assert answer["status"] == "success"
        finally:
            for sock in held:
                sock.close()


@pytest.fixture
def silent_ami():
    fake = FakeAmi("silent").start()
    yield fake
    fake.stop()


def test_click_to_calls_stuck_on_a_silent_manager_leave_workers_for_the_rest(tmp_path, silent_ami):
    settings = api_settings(tmp_path, ami_user="clinica", ami_secret="ami-secret", ami_port=silent_ami.port,
                            ami_timeout_ms=2000)
    with running_server(settings) as server:
        answers = []
        stuck = [threading.Thread(target=lambda: answers.append(signed_post(
            server.address, EXT_TO_PHONE, {"ext_number": "902", "phone_number": "0639798793"}, 30)[0]))
            for _ in range(THREADS)]
        for thread in stuck:
            thread.start()
        until = time.monotonic() + 10
        while silent_ami.connections < 2 and time.monotonic() < until:  # the manager holds some of them
            time.sleep(0.01)
        answer, _ = signed_post(server.address, CALL_DETAILS, {"generalCallID": [1]})
        assert answer["status"] == "success"
        for thread in stuck:
            thread.join(30)
    # Those the manager held ran into its time limit; the others were told at once that
    # the manager is not answering.  None was left without an answer.
    assert len(answers) == THREADS
    assert {a["code"] for a in answers} == {int(Code.AMI_TIMEOUT)}


@pytest.mark.fault
def test_a_signed_request_is_answered_within_a_second_whatever_holds_the_slots(tmp_path, silent_ami):
    settings = api_settings(tmp_path, ami_user="clinica", ami_secret="ami-secret", ami_port=silent_ami.port,
                            ami_timeout_ms=2000)
    with running_server(settings) as server:
        held = hold_connections(server.address, CONNECTION_LIMIT, CONNECTION_LIMIT // 2)
        stuck = [threading.Thread(target=signed_post, daemon=True, args=(
            server.address, EXT_TO_PHONE, {"ext_number": "902", "phone_number": "0639798793"}, 30))
            for _ in range(THREADS)]
        try:
            for thread in stuck:
                thread.start()
            until = time.monotonic() + 10
            while silent_ami.connections < 2 and time.monotonic() < until:
                time.sleep(0.01)
            waits = [signed_post(server.address, CALL_DETAILS, {"generalCallID": [1]})[1] for _ in range(5)]
        finally:
            for sock in held:
                sock.close()
        for thread in stuck:
            thread.join(30)
    figure(f"API, {CONNECTION_LIMIT} idle and {CONNECTION_LIMIT // 2} half-sent connections, {THREADS} "
           "click-to-calls on a silent manager", f"signed call-details answered in {max(waits) * 1000:.0f} ms at most "
           f"(5 requests)")
    assert max(waits) < 1.0, waits
