"""A CRM behind a redirect: a 3xx is never a delivery.  301, 302 and 303 (which HTTP
clients follow with a GET that drops the body) are logged with their Location and retried;
307 and 308 (which keep the method and the body) are followed to the same scheme or to
https, a few hops at most.  Against a real HTTP server, for the worker, the hooks in a
FastAGI server and the ``clinica-agi`` script."""

import logging
import sqlite3

import pytest
from support import player
from support.fake_asterisk import FakeCall, freepbx_calls
from support.faults import environment
from support.fastagi import running_server
from support.redirecting_crm import NEW_PATH, OLD_PATH, RedirectingCrm

from clinica_asterisk.delivery.sender import PushSender
from clinica_asterisk.delivery.transport import MAX_REDIRECTS, redirect_target
from clinica_asterisk.delivery.worker import deliver_pass
from clinica_asterisk.devtools.simulation import recorded_calls
from clinica_asterisk.store.database import Store
from clinica_asterisk.store.outbox import Outbox

PAYLOAD = {"requestType": "receivedTheCall", "generalCallID": "1795715093000", "externalNumber": "+380670219424",
           "note": "Клієнт & co = 100%"}
NOT_FOLLOWED = [301, 302, 303]
FOLLOWED = [307, 308]
PASSWORD, TOKEN = "pw-51c0e2", "tok-8a7d3f"


@pytest.fixture(params=NOT_FOLLOWED + FOLLOWED)
def moved(request):
    crm = RedirectingCrm(request.param)
    yield crm
    crm.stop()


def queued(store, payload=PAYLOAD):
    outbox = Outbox(store)
    with store.transaction():
        outbox.enqueue(int(payload["generalCallID"]), payload["requestType"], payload)
    return outbox


def last_errors(db_path):
    with sqlite3.connect(db_path) as conn:
        return [row[0] for row in conn.execute("SELECT last_error FROM outbox WHERE last_error IS NOT NULL")]


def assert_delivered_once_with_its_body(crm, payloads):
    """What the old path was sent reached the new one once each, byte for byte, by POST."""
    old, new = crm.at(OLD_PATH), crm.at(NEW_PATH)
    assert [r.method for r in new] == ["POST"] * len(payloads)
    assert [r.body for r in new] == [r.body for r in old]
    assert [r.fields for r in new] == payloads


def assert_nothing_delivered(crm):
    assert crm.at(NEW_PATH) == []  # in particular no GET without the body
    assert {r.method for r in crm.at(OLD_PATH)} == {"POST"}


# --- the rule, a pure function -----------------------------------------------------------------

@pytest.mark.parametrize("url, status, location, hops, target, why_not", [
    ("http://crm/a", 307, "/b", 0, "http://crm/b", ""),
    ("http://crm/a", 308, "https://crm/a", 0, "https://crm/a", ""),
    ("https://crm/a", 308, "https://other/a?t=1", 0, "https://other/a?t=1", ""),
    ("http://crm/a", 307, "http://other:8080/a", 0, "http://other:8080/a", ""),
    ("https://crm/a", 307, "http://crm/a", 0, "http://crm/a", "from https to http"),
    ("http://crm/a", 307, "ftp://crm/a", 0, "ftp://crm/a", "not an http or https URL"),
    ("http://crm/a", 307, "/b", MAX_REDIRECTS, "http://crm/b", f"more than {MAX_REDIRECTS} redirects"),
    ("http://crm/a", 301, "https://crm/a", 0, "https://crm/a", "it would turn the POST into a GET without the body"),
    ("http://crm/a", 302, "/b", 0, "http://crm/b", "it would turn the POST into a GET without the body"),
    ("http://crm/a", 303, "/b", 0, "http://crm/b", "it would turn the POST into a GET without the body"),
    ("http://crm/a", 300, "/b", 0, "http://crm/b", "it would turn the POST into a GET without the body"),
    ("http://crm/a", 307, None, 0, "", "no Location"),
    ("http://crm/a", 307, "http://crm:port/", 0, "", "a Location that is not a URL"),
])
def test_which_redirects_are_followed(url, status, location, hops, target, why_not):
    assert redirect_target(url, status, location, hops) == (target, why_not)


# --- the worker ----------------------------------------------------------------------------------

def test_the_worker_marks_nothing_delivered_on_a_301_302_303_and_follows_307_308_once(moved, tmp_path, caplog):
    store = Store(str(tmp_path / "clinica.sqlite3"))
    outbox = queued(store)
    with caplog.at_level(logging.INFO):
        stats = deliver_pass(outbox, PushSender(moved.url), 5.0, 60.0, due_only=False)

    if moved.status in FOLLOWED:
        assert (stats.sent, stats.failed, stats.waiting) == (1, 0, 0)
        assert_delivered_once_with_its_body(moved, [PAYLOAD])
        assert f"HTTP 200 from {moved.base}{NEW_PATH} after 1 redirect(s)" in caplog.text
        return
    assert (stats.sent, stats.failed, stats.waiting) == (0, 1, 1)
    assert_nothing_delivered(moved)
    why = f"HTTP {moved.status} to {moved.base}{NEW_PATH}, not followed"
    assert why in last_errors(store.path)[0]
    assert why in caplog.text and "CLINICA_CRM_PUSH_URL" in caplog.text
    # Retried: once the push URL is the new one, the event goes out.
    stats = deliver_pass(outbox, PushSender(moved.base + NEW_PATH), 5.0, 60.0, due_only=False)
    assert (stats.sent, stats.waiting) == (1, 0)
    assert [r.fields for r in moved.at(NEW_PATH)] == [PAYLOAD]


def test_a_redirect_s_location_is_logged_without_its_secrets(tmp_path, caplog):
    crm = RedirectingCrm(301)
    crm.location = f"http://clinic:{PASSWORD}@127.0.0.1:{crm.server_address[1]}{NEW_PATH}?token={TOKEN}#{TOKEN}"
    try:
        store = Store(str(tmp_path / "clinica.sqlite3"))
        with caplog.at_level(logging.DEBUG):
            deliver_pass(queued(store), PushSender(crm.url + f"?token={TOKEN}"), 5.0, 60.0, due_only=False)
    finally:
        crm.stop()
    shown = f"to http://127.0.0.1:{crm.server_address[1]}{NEW_PATH}, not followed"
    assert shown in caplog.text and shown in last_errors(store.path)[0]
    for text in (caplog.text, *last_errors(store.path)):
        assert PASSWORD not in text and TOKEN not in text


def test_a_redirect_loop_ends_after_a_few_hops_and_delivers_nothing(tmp_path):
    crm = RedirectingCrm(307, location=OLD_PATH)
    try:
        store = Store(str(tmp_path / "clinica.sqlite3"))
        stats = deliver_pass(queued(store), PushSender(crm.url), 5.0, 60.0, due_only=False)
    finally:
        crm.stop()
    assert (stats.sent, stats.waiting) == (0, 1)
    assert len(crm.at(OLD_PATH)) == MAX_REDIRECTS + 1
    assert f"more than {MAX_REDIRECTS} redirects" in last_errors(store.path)[0]


def test_a_307_to_another_host_does_not_get_the_credentials(tmp_path):
    crm, other = RedirectingCrm(307), RedirectingCrm(200)
    crm.location = other.base + NEW_PATH
    try:
        sender = PushSender(crm.url.replace("http://", f"http://clinic:{PASSWORD}@"))
        attempt = sender.post(PAYLOAD, 5)
    finally:
        crm.stop()
        other.stop()
    assert attempt.ok
    assert [r.fields for r in other.at(NEW_PATH)] == [PAYLOAD]
    assert other.authorizations == [None] and crm.authorizations[0].startswith("Basic ")


# --- the hooks -----------------------------------------------------------------------------------

def test_hooks_of_a_fastagi_server_queue_on_a_301_302_303_and_send_once_on_307_308(moved, tmp_path, settings_for):
    settings = settings_for(moved.url, hook_deadline_ms=2000, answer_deadline_ms=2000)
    with running_server(settings) as server:
        statuses = [p.status for p in player.play(recorded_calls()["in-801"], player.OverFastAgi(server.address))]

    payloads = [r.fields for r in moved.at(OLD_PATH)]
    if moved.status in FOLLOWED:
        assert statuses == ["SENT"] * 3
        assert [p["requestType"] for p in payloads] == ["receivedTheCall", "answeredTheCall", "hangupTheCall"]
        assert_delivered_once_with_its_body(moved, payloads)
        assert Outbox(Store(settings.db_path)).backlog()[0] == 0
    else:
        # The call's first event is tried again by each hook; the later ones wait behind it.
        assert statuses == ["QUEUED"] * 3
        assert {p["requestType"] for p in payloads} == {"receivedTheCall"}
        assert_nothing_delivered(moved)
        assert Outbox(Store(settings.db_path)).backlog()[0] == 3


def test_the_script_queues_on_a_301_302_303_and_sends_once_on_307_308(moved, tmp_path):
    env = environment(tmp_path, crm_push_url=moved.url, hook_deadline_ms=2000, answer_deadline_ms=2000)
    ring_in = recorded_calls()["in-801"][:1]
    played = player.play(ring_in, player.Script(env))

    assert played[0].conversation.returncode == 0
    if moved.status in FOLLOWED:
        assert played[0].status == "SENT"
        assert_delivered_once_with_its_body(moved, [r.fields for r in moved.at(OLD_PATH)])
        assert [r.fields["requestType"] for r in moved.at(NEW_PATH)] == ["receivedTheCall"]
    else:
        assert played[0].status == "QUEUED"
        assert_nothing_delivered(moved)
        assert len(moved.at(OLD_PATH)) == 1
        assert f"HTTP {moved.status} to {moved.base}{NEW_PATH}, not followed" in last_errors(
            tmp_path / "data" / "clinica.sqlite3")[0]


def test_the_in_process_hooks_take_the_same_transport(moved, settings_for):
    """FreePBX-shaped call through run_hook (the path both modes share)."""
    from clinica_asterisk.hooks.stages import HookServices

    services = HookServices.open(settings_for(moved.url, hook_deadline_ms=2000, answer_deadline_ms=2000))
    played = player.play(freepbx_calls()["in-miss"], player.InProcess(services), FakeCall())
    reported = [p.status for p in played if p.status != "SKIPPED"]
    if moved.status in FOLLOWED:
        assert set(reported) == {"SENT"}
        assert_delivered_once_with_its_body(moved, [r.fields for r in moved.at(OLD_PATH)])
    else:
        assert "SENT" not in reported
        assert_nothing_delivered(moved)
