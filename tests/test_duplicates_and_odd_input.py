"""Hooks fired twice for one call, concurrently, and caller ids of every odd kind."""

import threading

import pytest
from support.fake_asterisk import FakeCall, freepbx_calls
from support.player import our_args, run_over_socket

from clinica_asterisk.hooks.stages import HookServices

CALLS = freepbx_calls()


def run_concurrently(settings, sessions):
    """Each session on its own thread, own store connection and own channel (as two Local
    channel halves would run them), all started together."""
    start = threading.Barrier(len(sessions))
    results = []

    def one(session):
        services = HookServices.open(settings)
        start.wait()
        results.append(run_over_socket(services, FakeCall(), session)[0])

    threads = [threading.Thread(target=one, args=(s,)) for s in sessions]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def test_two_legs_ringing_at_once_make_one_call_and_one_push(crm, settings_for):
    ring_in = CALLS["in-801"][0].with_args(["ring-in", "0443334000", "801"])
    results = run_concurrently(settings_for(crm.url), [ring_in] * 8)
    assert len({r.call_id for r in results}) == 1
    assert [p["requestType"] for p in crm.pushes()] == ["receivedTheCall"]


def test_two_legs_answering_report_one_answer(crm, settings_for):
    settings = settings_for(crm.url)
    services = HookServices.open(settings)
    call = FakeCall()
    for session in CALLS["in-group"][:2]:
        run_over_socket(services, call, session.with_args(our_args(session)))
    answer = CALLS["in-group"][4]
    both = []
    for member in ("801", "802"):
        session = answer.with_args(["answer", member, "ext"])
        session.variables["CLINICA_CALLID"] = call.inherited["CLINICA_CALLID"]
        both.append(session)
    run_concurrently(settings, both)
    answered = [p for p in crm.pushes() if p["requestType"] == "answeredTheCall"]
    assert len(answered) == 1 and answered[0]["internalNumber"] in ("801", "802")


@pytest.mark.parametrize("caller, pushed", [
    ("", ""),
    ("unknown", ""),
    ("+380670219424", "0670219424"),
    ('"Dr. Ivanenko" <+380670219424>', "0670219424"),
    ("Клієнт", ""),
    ("0" + "67" * 600, ("0" + "67" * 600)[:20]),
    ('"; DROP TABLE calls; --', ""),
])
def test_odd_caller_ids_give_a_correct_push_never_a_crash(caller, pushed, crm, settings_for):
    sessions = [s.with_args(our_args(s)) for s in CALLS["in-801"]]
    for s in sessions:
        s.variables["${CALLERID(num)}"] = caller
        s.variables["${CALLERID(name)}"] = "Клієнт \"VIP\" (тест)"
    services = HookServices.open(settings_for(crm.url))
    call = FakeCall()
    statuses = [run_over_socket(services, call, s)[0].status for s in sessions]
    assert statuses == ["SKIPPED", "SENT", "SENT", "SENT"]
    assert [p["externalNumber"] for p in crm.pushes()[:2]] == [pushed, pushed]
