"""Pure decisions of the call flow: who answered, talk time, disposition, duplicates."""

import pytest

from clinica_asterisk.calls.numbers import NumberFormat
from clinica_asterisk.calls.plans import (
    disposition, extension_of, extension_of_channel, plan_answer, plan_dial,
    plan_hangup, plan_ring_in, plan_ring_out, talk_seconds)

FMT = NumberFormat()


@pytest.mark.parametrize("dialed, extension", [
    ("801", "801"),
    ("802/802", "802"),
    ("801/sip:801@10.0.0.5:5060", "801"),
    ("802@from-queue/n", "802"),
    ("801@ext-local", "801"),
    ("pstn1/0670219424", "0670219424"),
    ("", ""),
])
def test_who_answered_from_dialedpeernumber(dialed, extension):
    assert extension_of(dialed) == extension


@pytest.mark.parametrize("channel, extension", [
    ("PJSIP/904-0000001a", "904"),
    ("IAX2/904-509", "904"),
    ("Local/801@originate-skipvm-00000004;1", "801"),
    ("PJSIP/trunk_kyivstar-00000003", ""),
    ("", ""),
])
def test_extension_of_a_channel(channel, extension):
    assert extension_of_channel(channel) == extension


@pytest.mark.parametrize("call, facts, seconds", [
    ({"answered_at": 100.0}, {"answeredtime": "35"}, 35),
    ({"answered_at": 100.0}, {"answeredtime": ""}, 20),         # Queue(): no ANSWEREDTIME
    ({}, {"dialstatus": "ANSWER", "cdr_billsec": "7"}, 7),      # answer hook missed
    ({}, {"dialstatus": "CANCEL", "cdr_billsec": "7"}, 0),
    ({}, {}, 0),
    # An IVR answered the client 8 s before the employee: ANSWEREDTIME counts the IVR too.
    ({"answered_at": 116.0, "pre_answered": 1}, {"answeredtime": "8"}, 4),
    # Transferred: ANSWEREDTIME of the last Dial still counts from the first answer.
    ({"answered_at": 100.0, "transfers": 1}, {"answeredtime": "20"}, 20),
    ({"answered_at": 100.0}, {"answeredtime": "4x"}, 20),
])
def test_talk_seconds(call, facts, seconds):
    assert talk_seconds(call, facts, now=120.0) == seconds


@pytest.mark.parametrize("call, facts, result", [
    ({"answered_at": 1.0}, {"dialstatus": "CANCEL"}, "ANSWER"),
    ({}, {"dialstatus": "NOANSWER"}, "NOANSWER"),
    ({}, {"dialstatus": "CHANUNAVAIL"}, "CHANUNAVAIL"),
    ({}, {"dialstatus": "", "cdr_disposition": "BUSY"}, "BUSY"),
    ({}, {"dialstatus": "", "cdr_disposition": "FAILED"}, "CHANUNAVAIL"),
    ({}, {"dialstatus": "", "cdr_disposition": "NO ANSWER"}, "CANCEL"),
    ({}, {"dialstatus": "garbage", "cdr_disposition": "ANSWERED"}, "CANCEL"),
    ({"answered_at": 1.0, "transfers": 2}, {"dialstatus": "ANSWER"}, "TRANSFER"),
    ({}, {"dialstatus": "NOANSWER", "vmstatus": "SUCCESS"}, "VM"),
    ({}, {"dialstatus": "NOANSWER", "vmstatus": "SUCCESS", "vm_message": "/var/spool/x/msg0000"}, "VM-SUCCESS"),
    ({"answered_at": 1.0}, {"vmstatus": "SUCCESS", "vm_message": "/x"}, "ANSWER"),
])
def test_disposition_in_binotel_words(call, facts, result):
    assert disposition(call, facts) == result


def incoming(**fields):
    call = {"id": 1, "direction": "in", "internal_number": "", "dst_numbers": [], "answered_at": None,
            "ended_at": None}
    call.update(fields)
    return call


def test_ring_in_twice_creates_one_call():
    first = plan_ring_in(None, {"caller": "+380670219424", "did": "0443334000", "linkedid": "1.2"}, FMT, 10.0)
    assert first.create["external_number"] == "0670219424" and first.events == ()
    again = plan_ring_in(incoming(), {"caller": "+380670219424"}, FMT, 11.0)
    assert again.create is None and again.events == ()


def test_dial_of_an_internal_call_does_nothing():
    assert plan_dial(None, {"target": "801"}, FMT, 1.0).events == ()


def test_dial_of_a_group_reports_the_group_and_keeps_the_member():
    plan = plan_dial(incoming(), {"target": "801", "group": "600"}, FMT, 1.0)
    assert plan.changes == {"internal_number": "600", "dst_numbers": ["600", "801"]}
    assert plan.events == ("receivedTheCall",)


def test_second_answer_by_the_same_member_changes_nothing():
    plan = plan_answer(incoming(answered_at=5.0, answered_by="801"), {"target": "801", "leg": "ext"}, FMT, 6.0)
    assert plan.changes == {} and plan.events == ("answeredTheCall",)


def test_click_to_call_extension_leg_answer_is_not_the_client_answering():
    call = {"id": 1, "direction": "out", "internal_number": "801", "dst_numbers": [], "answered_at": None}
    assert plan_answer(call, {"target": "801", "leg": "ext"}, FMT, 1.0).events == ()
    assert plan_answer(call, {"target": "801", "leg": ""}, FMT, 1.0).events == ()
    assert plan_answer(call, {"target": "0670219424", "leg": "trunk"}, FMT, 1.0).events == (
        "receivedTheCall", "answeredTheCall")


def test_trunk_hook_on_an_incoming_call_starts_no_outgoing_call():
    assert plan_ring_out(incoming(), {"number": "0501234567", "trunk": "1"}, FMT, 1.0).events == ()


def test_hangup_of_a_call_no_hook_stored_still_tells_the_crm():
    plan = plan_hangup(None, {"direction": "out", "number": "0670219424", "caller_extension": "904",
                              "dialstatus": "BUSY"}, FMT, 1.0)
    assert plan.create["direction"] == "out" and plan.create["disposition"] == "BUSY"
    assert plan.events == ("receivedTheCall", "hangupTheCall")


def test_second_hangup_changes_nothing():
    plan = plan_hangup(incoming(ended_at=3.0, billsec=5), {"dialstatus": "ANSWER", "answeredtime": "9"}, FMT, 9.0)
    assert plan.changes == {} and plan.events == ("receivedTheCall", "hangupTheCall")


def test_trunk_leg_of_an_incoming_call_hanging_up_does_not_end_the_call():
    plan = plan_hangup(incoming(), {"direction": "out", "dialstatus": "NOANSWER"}, FMT, 5.0)
    assert plan.changes == {} and plan.events == ()


def test_click_to_call_stored_by_the_api_gets_its_linkedid_on_the_trunk_hook():
    call = {"id": 7, "direction": "out", "origin": "api", "linkedid": None, "internal_number": "801",
            "external_number": "0670219424", "dst_numbers": []}
    plan = plan_ring_out(call, {"linkedid": "1795715147.29", "number": "0670219424", "trunk": "1",
                                "caller_extension": ""}, FMT, 1.0)
    assert plan.changes == {"linkedid": "1795715147.29", "trunk": "1", "dst_numbers": ["0670219424"]}
    assert plan.events == ("receivedTheCall",)
