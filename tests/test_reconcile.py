"""The reconciler against a fake Asterisk manager on a real socket, a real call store and a
real CRM stand-in: calls whose channels are gone are closed and reported once, a
click-to-call that never rang the client is closed without a push, a manager that does not
answer changes nothing, and the delivery worker of ``serve`` and ``deliver --forever``
sweeps from its start."""

import logging
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from support.api import api_settings, post
from support.settings import make_settings
from support.fake_ami import FakeAmi
from support.fake_asterisk import FakeCall, freepbx_calls
from support.fastagi import WAIT_S
from support.player import our_args, run_over_socket

from clinica_asterisk.api.app import build_context, create_app
from clinica_asterisk.api.call_details import details
from clinica_asterisk.cli.serve import DeliveryWorker
from clinica_asterisk.devtools.crm_sink import CrmSink
from clinica_asterisk.delivery.sender import PushSender
from clinica_asterisk.delivery.worker import deliver_pass
from clinica_asterisk.hooks.stages import HookServices
from clinica_asterisk.store.outbox import Outbox
from clinica_asterisk.delivery.reconcile import Reconciler
from clinica_asterisk.store.database import Store

CALLS = freepbx_calls()
BIN = os.path.dirname(sys.executable)
AMI = dict(ami_user="clinica", ami_secret="ami-secret", ami_timeout_ms=300, pbx_id="pbx1")


@pytest.fixture
def ami():
    fake = FakeAmi().start()
    yield fake
    fake.stop()


class Clock:
    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now


def play_without_hangup(services, scenario):
    """A recorded FreePBX call up to its hang-up hook, which never runs."""
    call = FakeCall()
    results = [run_over_socket(services, call, s.with_args(our_args(s)))[0]
               for s in CALLS[scenario] if s.extra["hook"] != "hangup"]
    return next(r.call_id for r in results if r.call_id)


def deliver(settings):
    store = Store(settings.db_path)
    try:
        return deliver_pass(Outbox(store), PushSender(settings.crm_push_url), settings.deliver_timeout_s,
                            settings.deliver_max_backoff_s, due_only=False)
    finally:
        store.close()


def pushes_of(crm, call_id):
    return [p for p in crm.pushes() if p["generalCallID"] == str(call_id)]


def test_a_call_whose_channels_are_gone_is_closed_after_two_lists_and_the_crm_hears_one_hangup(tmp_path, ami, crm):
    settings = make_settings(tmp_path / "data", ami_port=ami.port, crm_push_url=crm.url, **AMI)
    t0 = time.time()
    hooks_clock = Clock(t0)
    services = HookServices(settings, Store(settings.db_path), PushSender(crm.url), pbx="pbx1", clock=hooks_clock)
    gone = play_without_hangup(services, "in-801")  # answered by 801 at t0 (the hooks' clock)
    hooks_clock.now = t0 + 10
    alive = play_without_hangup(services, "in-group")
    store = Store(settings.db_path)
    # Asterisk still has the group call (its trunk channel and the member's); in-801 is gone.
    ami.channels = [("PJSIP/pstn1-00000002", "1795715101.2", "1795715101.2"),
                    ("PJSIP/802-00000004", "1795715101.4", "1795715101.2")]
    assert [p["requestType"] for p in pushes_of(crm, gone)] == ["receivedTheCall", "answeredTheCall"]

    clock = Clock(t0 + 100)
    reconciler = Reconciler(settings, store, clock=clock)
    assert reconciler.sweep() == []  # missing once: not yet
    assert store.call(gone)["ended_at"] is None
    clock.now = t0 + 160
    assert reconciler.sweep() == [gone]

    call = store.call(gone)
    assert (call["ended_at"], call["billsec"], call["disposition"]) == (t0 + 100, 100, "ANSWER")
    assert details(call, False, {}, "", t0 + 200)["disposition"] == "ANSWER"
    assert store.call(alive)["ended_at"] is None
    assert details(store.call(alive), False, {}, "", t0 + 200)["disposition"] == "ONLINE"

    assert deliver(settings).sent == 1  # receivedTheCall was sent by the hooks already
    clock.now = t0 + 220
    assert reconciler.sweep() == []
    assert deliver(settings).sent == 0
    assert pushes_of(crm, gone)[2:] == [
        {"generalCallID": str(gone), "billsec": "100", "companyID": "", "disposition": "ANSWER",
         "requestType": "hangupTheCall"}]
    assert [p["requestType"] for p in pushes_of(crm, alive)] == ["receivedTheCall", "answeredTheCall"]
    assert [kv for kv in ami.listings()[0] if kv[0] != "ActionID"] == [("Action", "CoreShowChannels")]


def test_the_hangup_hook_that_runs_late_after_all_wins(tmp_path, ami, crm):
    settings = make_settings(tmp_path / "data", ami_port=ami.port, crm_push_url=crm.url, **AMI)
    t0 = time.time()
    services = HookServices(settings, Store(settings.db_path), PushSender(crm.url), pbx="pbx1", clock=Clock(t0))
    call_id = play_without_hangup(services, "in-801")
    store = Store(settings.db_path)
    clock = Clock(t0 + 100)
    reconciler = Reconciler(settings, store, clock=clock)
    assert reconciler.sweep() == []
    with store.transaction():  # the hang-up hook, between the two lists
        store.update_call(call_id, {"ended_at": t0 + 90, "billsec": 80, "disposition": "ANSWER"})
    clock.now = t0 + 160
    assert reconciler.sweep() == []
    assert (store.call(call_id)["ended_at"], store.call(call_id)["billsec"]) == (t0 + 90, 80)
    assert "hangupTheCall" not in request_types(store, call_id)


def request_types(store, call_id):
    """The events of a call in the outbox, sent or not."""
    return [row[0] for row in store.conn.execute("SELECT request_type FROM outbox WHERE call_id = ? ORDER BY id",
                                                 (call_id,))]


def click_to_call_client(tmp_path, ami_port, crm, now):
    settings = api_settings(tmp_path, ami_port=ami_port, crm_push_url=crm.url, **AMI)
    return settings, create_app(settings, build_context(settings, clock=lambda: now)).test_client()


def test_a_click_to_call_whose_extension_never_answered_is_closed_noanswer_without_a_push(tmp_path, ami, crm):
    now = 1795715147.0
    settings, client = click_to_call_client(tmp_path, ami.port, crm, now)
    ids = [int(post(client, "/api/2.0/calls/ext-to-phone.json",
                    {"ext_number": ext, "phone_number": "0639798793"})[1]["generalCallID"]) for ext in ("902", "903")]
    store = Store(settings.db_path)
    ringing = store.call(ids[1])["linkedid"]
    # 902 never answered and Asterisk gave up on it; 903 still rings (both Local halves).
    ami.channels = [("Local/903@originate-skipvm-00000006;1", ringing, ringing),
                    ("Local/903@originate-skipvm-00000006;2", ringing + ";2", ringing)]

    clock = Clock(now + 60)
    reconciler = Reconciler(settings, store, clock=clock)
    assert reconciler.sweep() == []
    clock.now = now + 120
    assert reconciler.sweep() == [ids[0]]

    call = store.call(ids[0])
    assert (call["ended_at"], call["billsec"], call["disposition"]) == (now + 60, 0, "NOANSWER")
    assert store.call(ids[1])["ended_at"] is None
    status, answer = post(client, "/stats/call-details.json", {"generalCallID": ids})
    assert [answer["callDetails"][str(i)]["disposition"] for i in ids] == ["NOANSWER", "ONLINE"]
    assert Outbox(store).pending_of_call(ids[0]) == [] and request_types(store, ids[0]) == []
    assert deliver(settings).sent == 0 and crm.pushes() == []


NEVER_LISTS = ["silent", "mute-after-login", "stall-list", "cut-list", "close-after-login", "refuse",
               "bad-login", "down"]


@pytest.mark.parametrize("behaviour", NEVER_LISTS)
def test_a_manager_that_does_not_list_costs_one_bounded_wait_closes_nothing_and_warns_once(
        tmp_path, behaviour, caplog, closed_port_url):
    fake = FakeAmi(behaviour if behaviour != "down" else "accept", refusal="Permission denied").start()
    port = int(closed_port_url.split(":")[2].split("/")[0]) if behaviour == "down" else fake.port
    try:
        settings = make_settings(tmp_path / "data", ami_port=port, **AMI)
        store = Store(settings.db_path)
        with store.transaction():
            # Older than CLINICA_ONLINE_MAX_S too: with an AMI user, only a list may close it.
            call_id = store.insert_call({"pbx": "pbx1", "linkedid": "1795715093.0", "direction": "in",
                                         "started_at": time.time() - 86400})
        reconciler = Reconciler(settings, store)
        with caplog.at_level(logging.INFO, logger="clinica_asterisk"):
            assert reconciler.sweep() == []
            assert reconciler.sweep() == []
            assert store.call(call_id)["ended_at"] is None
            warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
            assert len(warnings) == 1 and "cannot list Asterisk's channels" in warnings[0].getMessage()
            if behaviour == "refuse":
                assert "Permission denied" in warnings[0].getMessage()
                assert "write=reporting" in warnings[0].getMessage()
            assert "ami-secret" not in caplog.text
            if behaviour != "down":
                assert fake.connections == 2  # one session a sweep, each ended at its time limit

            # The manager is back: the call is closed after two lists, like any other.
            fake.behaviour = "accept"
            if behaviour == "down":
                settings = make_settings(tmp_path / "data", ami_port=fake.port, **AMI)
                reconciler = Reconciler(settings, store)
            assert reconciler.sweep() == []
            assert reconciler.sweep() == [call_id]
        assert store.call(call_id)["disposition"] == "CANCEL"
        if behaviour != "down":
            assert "the manager lists Asterisk's channels again" in caplog.text
    finally:
        fake.stop()


def insert_open(store, started_at, **fields):
    with store.transaction():
        return store.insert_call({"pbx": "pbx1", "direction": "in", "started_at": started_at,
                                  "external_number": "0670219424", "did": "0443334000",
                                  "internal_number": "801", **fields})


def test_without_an_ami_user_calls_older_than_the_maximum_are_closed(tmp_path, crm):
    settings = make_settings(tmp_path / "data", crm_push_url=crm.url, pbx_id="pbx1", online_max_s=3600)
    store = Store(settings.db_path)
    now = time.time()
    old = insert_open(store, now - 3700, linkedid="1795715093.0", answered_at=now - 3690, answered_by="801")
    click = insert_open(store, now - 4000, direction="out", origin="api", linkedid="clinica-pbx1-1")
    young = insert_open(store, now - 3500, linkedid="1795715101.2")

    assert Reconciler(settings, store, clock=Clock(now)).sweep() == [old, click]  # one look is enough: it is the age
    assert (store.call(old)["ended_at"], store.call(old)["billsec"], store.call(old)["disposition"]) == \
        (now, 3690, "ANSWER")
    assert store.call(click)["disposition"] == "NOANSWER"
    assert store.call(young)["ended_at"] is None

    assert deliver(settings).sent == 2
    assert crm.pushes() == [
        {"didNumber": "0443334000", "externalNumber": "0670219424", "internalNumber": "801",
         "generalCallID": str(old), "callType": "0", "companyID": "", "pbxNumber": "0443334000",
         "did": "0443334000", "srcNumber": "", "requestType": "receivedTheCall"},
        {"generalCallID": str(old), "billsec": "3690", "companyID": "", "disposition": "ANSWER",
         "requestType": "hangupTheCall"},
    ]


def test_a_maximum_age_of_zero_leaves_calls_it_cannot_look_for_online(tmp_path):
    settings = make_settings(tmp_path / "data", online_max_s=0)
    store = Store(settings.db_path)
    call_id = insert_open(store, time.time() - 30 * 86400)
    assert Reconciler(settings, store).sweep() == []
    assert store.call(call_id)["ended_at"] is None


def test_with_an_ami_user_an_old_call_without_a_linkedid_is_closed_by_its_age(tmp_path, ami):
    settings = make_settings(tmp_path / "data", ami_port=ami.port, online_max_s=3600, **AMI)
    store = Store(settings.db_path)
    now = time.time()
    old, young = insert_open(store, now - 3600), insert_open(store, now - 600)
    assert Reconciler(settings, store, clock=Clock(now)).sweep() == [old]
    assert store.call(young)["ended_at"] is None


def test_only_the_calls_of_this_pbx_are_reconciled_when_it_has_a_name(tmp_path, ami):
    settings = make_settings(tmp_path / "data", ami_port=ami.port, **AMI)
    store = Store(settings.db_path)
    ours = insert_open(store, time.time() - 600, linkedid="1795715093.0")
    theirs = insert_open(store, time.time() - 600, linkedid="1795715093.0", pbx="pbx2")
    reconciler = Reconciler(settings, store)
    assert reconciler.sweep() == [] and reconciler.sweep() == [ours]
    assert store.call(theirs)["ended_at"] is None


def test_later_sweeps_see_calls_stored_after_the_first(tmp_path, ami):
    settings = make_settings(tmp_path / "data", ami_port=ami.port, **AMI)
    store = Store(settings.db_path)
    now = time.time()
    first = insert_open(store, now - 600, linkedid="1795715093.0")
    clock = Clock(now)
    reconciler = Reconciler(settings, store, clock=clock)
    reconciler.sweep()
    assert reconciler.sweep() == [first]
    later = insert_open(store, now + 1, linkedid="1795715101.2")  # after every call was closed
    clock.now = now + 120
    assert reconciler.sweep() == []
    assert reconciler.sweep() == [later]


def test_a_reconcile_period_of_zero_turns_it_off(tmp_path):
    settings = make_settings(tmp_path / "data", reconcile_s=0)
    assert Reconciler.for_worker(settings, Store(settings.db_path)) is None


def test_the_delivery_worker_of_serve_sweeps_at_its_start(tmp_path):
    arrived = threading.Event()
    sink = CrmSink(on_push=lambda fields: fields["requestType"] == "hangupTheCall" and arrived.set()).start()
    try:
        settings = make_settings(tmp_path / "data", crm_push_url=sink.url, pbx_id="pbx1", online_max_s=3600)
        call_id = insert_open(Store(settings.db_path), time.time() - 7200)
        worker = DeliveryWorker(settings).start()
        try:
            assert arrived.wait(WAIT_S), "the worker closed the call at its start and sent hangupTheCall"
        finally:
            worker.shutdown(WAIT_S)
        assert [p["requestType"] for p in sink.pushes()] == ["receivedTheCall", "hangupTheCall"]
        assert Store(settings.db_path).call(call_id)["disposition"] == "CANCEL"
    finally:
        sink.stop()


def test_deliver_forever_in_script_mode_closes_a_call_asterisk_no_longer_has(tmp_path, ami):
    arrived = threading.Event()
    sink = CrmSink(on_push=lambda fields: fields["requestType"] == "hangupTheCall" and arrived.set()).start()
    try:
        settings = make_settings(tmp_path / "data", pbx_id="pbx1")
        call_id = insert_open(Store(settings.db_path), time.time() - 600, linkedid="1795715093.0")
        (tmp_path / "empty.env").write_text("")
        env = {k: v for k, v in os.environ.items() if not k.startswith("CLINICA_")}
        env.update(CLINICA_ENV_FILE=str(tmp_path / "empty.env"), CLINICA_DATA_DIR=str(tmp_path / "data"),
                   CLINICA_CRM_PUSH_URL=sink.url, CLINICA_PBX_ID="pbx1", CLINICA_AMI_USER="clinica",
                   CLINICA_AMI_SECRET="ami-secret", CLINICA_AMI_PORT=str(ami.port), CLINICA_RECONCILE_S="1",
                   CLINICA_LOG_FILE=str(tmp_path / "deliver.log"))
        proc = subprocess.Popen([os.path.join(BIN, "clinica-asterisk"), "deliver", "--forever"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            assert arrived.wait(WAIT_S), "deliver --forever closed the call after two lists"
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(WAIT_S) == 0
        assert len(ami.listings()) >= 2
        assert [p["requestType"] for p in sink.pushes()] == ["receivedTheCall", "hangupTheCall"]
        assert Store(settings.db_path).call(call_id)["disposition"] == "CANCEL"
        assert f"reconcile call={call_id} outcome=closed disposition=CANCEL" in (tmp_path / "deliver.log").read_text()
    finally:
        sink.stop()
