"""A CRM that is down, hangs or fails never hurts a call and never loses an event."""

import os
import signal
import subprocess
import sys
import threading

import pytest
from support.fake_asterisk import FakeCall, freepbx_calls, serve_session
from support.player import our_args, play_freepbx_call, run_over_socket

from clinica_asterisk.devtools.crm_sink import CrmSink
from clinica_asterisk.delivery.sender import PushSender
from clinica_asterisk.delivery.worker import deliver_pass
from clinica_asterisk.hooks.stages import QUEUED, SENT, HookServices
from clinica_asterisk.store.outbox import Outbox
from clinica_asterisk.store.database import Store

CALLS = freepbx_calls()
BIN = os.path.dirname(sys.executable)


def deliver_now(settings):
    store = Store(settings.db_path)
    return deliver_pass(Outbox(store), PushSender(settings.crm_push_url), settings.deliver_timeout_s,
                        settings.deliver_max_backoff_s, due_only=False)


def by_call(pushes):
    calls = {}
    for p in pushes:
        calls.setdefault(p["generalCallID"], []).append(p["requestType"])
    return calls


ORDER = ["receivedTheCall", "answeredTheCall", "hangupTheCall"]


@pytest.mark.parametrize("crm_state", ["down", "hanging", "failing"])
def test_hooks_queue_when_the_crm_misbehaves_and_deliver_sends_all_once_in_order(
        crm_state, request, closed_port_url, settings_for):
    if crm_state == "down":
        url, sink = closed_port_url, None
    else:
        sink = request.getfixturevalue("hanging_crm" if crm_state == "hanging" else "failing_crm")
        url = sink.url
    settings = settings_for(url, hook_deadline_ms=300, deliver_timeout_ms=500)
    services = HookServices.open(settings)
    results, _ = play_freepbx_call(services, CALLS["in-group"])

    # Every hook that had something to send returned (with a CRM that never answers, too)
    # and said so; nothing reached the CRM.
    assert [r.status for r in results if r.call_id and r.status != "SKIPPED"] == [QUEUED, QUEUED, QUEUED]
    assert Outbox(services.store).backlog()[0] == 3
    # A hung CRM's POST goes on after its hook to the end of its own limit; until then the
    # event is held (another copy could reach the CRM at the same time).
    assert services.sender.wait_idle(10) == 0

    back = CrmSink().start()
    try:
        settings = settings_for(back.url)
        stats = deliver_now(settings)
        assert (stats.sent, stats.failed, stats.waiting) == (3, 0, 0)
        assert list(by_call(back.pushes()).values()) == [ORDER]
        assert deliver_now(settings).sent == 0  # nothing is sent twice
    finally:
        back.stop()


def test_an_event_never_overtakes_a_queued_one_of_the_same_call(failing_crm, settings_for):
    services = HookServices.open(settings_for(failing_crm.url))
    sessions = CALLS["in-801"]
    call = FakeCall()
    for session in sessions[:2]:  # ring-in, dial: receivedTheCall fails (HTTP 500)
        run_over_socket(services, call, session.with_args(our_args(session)))
    failing_crm.recover()
    result, _ = run_over_socket(services, call, sessions[2].with_args(our_args(sessions[2])))
    assert result.status == SENT
    assert [p["requestType"] for p in failing_crm.pushes()] == ["receivedTheCall", "answeredTheCall"]


def test_deliver_leaves_a_failing_call_waiting_and_sends_the_others(closed_port_url, settings_for):
    services = HookServices.open(settings_for(closed_port_url, hook_deadline_ms=300))
    play_freepbx_call(services, CALLS["in-miss"])
    play_freepbx_call(services, CALLS["out-busy"])
    sink = CrmSink(hang_after=1).start()  # takes one event, then stops answering
    try:
        stats = deliver_now(settings_for(sink.url, deliver_timeout_ms=300))
        assert (stats.sent, stats.failed, stats.waiting) == (1, 2, 3)  # one failure per call
        sink.recover()
        stats = deliver_now(settings_for(sink.url))
        assert (stats.sent, stats.waiting) == (3, 0)
        calls = by_call(sink.pushes())
        assert sorted(calls.values()) == [["receivedTheCall", "hangupTheCall"]] * 2
    finally:
        sink.stop()


def script_env(tmp_path, url, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLINICA_")}
    (tmp_path / "empty.env").write_text("")
    env.update(CLINICA_CRM_PUSH_URL=url, CLINICA_DATA_DIR=str(tmp_path / "data"),
               CLINICA_ENV_FILE=str(tmp_path / "empty.env"), **extra)
    return env


def test_hook_killed_while_its_event_is_in_flight_loses_nothing(hanging_crm, tmp_path, settings_for):
    session = CALLS["out-answer"][0]
    env = script_env(tmp_path, hanging_crm.url, CLINICA_HOOK_DEADLINE_MS="30000")
    proc = subprocess.Popen([os.path.join(BIN, "clinica-agi")], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=env)
    asterisk = threading.Thread(target=serve_session, daemon=True, args=(
        FakeCall(), session.with_args(our_args(session)), proc.stdout.fileno(), proc.stdin.fileno(), 60))
    asterisk.start()
    assert hanging_crm.arrived.wait(30), "the hook never reached the CRM"
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)

    hanging_crm.recover()
    stats = deliver_now(settings_for(hanging_crm.url))
    assert (stats.sent, stats.waiting) == (1, 0)
    assert [p["requestType"] for p in hanging_crm.pushes()] == ["receivedTheCall"]


def test_deliver_killed_mid_way_loses_nothing_and_keeps_the_order(closed_port_url, tmp_path, settings_for):
    settings = settings_for(closed_port_url, hook_deadline_ms=300)
    services = HookServices.open(settings)
    for scenario in ("in-801", "in-group", "out-answer"):
        play_freepbx_call(services, CALLS[scenario])
    assert Outbox(services.store).backlog()[0] == 9

    sink = CrmSink(hang_after=4).start()
    try:
        env = script_env(tmp_path, sink.url, CLINICA_DELIVER_TIMEOUT_MS="60000")
        proc = subprocess.Popen([os.path.join(BIN, "clinica-asterisk"), "deliver"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while sink.arrivals < 5:  # the fifth request hangs: kill deliver while it waits
                if proc.poll() is not None:
                    raise AssertionError(f"deliver exited early: {proc.returncode}")
                sink.arrived.wait(0.05)
                sink.arrived.clear()
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        assert len(sink.pushes()) == 4
        sink.recover()
        done = subprocess.run([os.path.join(BIN, "clinica-asterisk"), "deliver"], env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("sent 5, failed 0, waiting 0")
        calls = by_call(sink.pushes())
        assert list(calls.values()) == [ORDER] * 3  # each event once, in order per call
    finally:
        sink.stop()


def test_deliver_says_what_is_still_waiting(closed_port_url, tmp_path, settings_for):
    services = HookServices.open(settings_for(closed_port_url, hook_deadline_ms=300))
    play_freepbx_call(services, CALLS["in-miss"])
    env = script_env(tmp_path, closed_port_url, CLINICA_DELIVER_TIMEOUT_MS="300")
    done = subprocess.run([os.path.join(BIN, "clinica-asterisk"), "deliver"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 3
    assert done.stdout.startswith("sent 0, failed 1, waiting 2, oldest queued")
