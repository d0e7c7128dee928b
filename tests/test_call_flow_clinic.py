"""Pure decisions of a clinic's everyday calls: ring groups dialled from ${ds}, IVRs,
blind and attended transfers, voicemail, a click-to-call nobody answers."""

import pytest

from clinica_asterisk.calls.numbers import NumberFormat
from clinica_asterisk.calls.plans import (
    CONSULT_GONE, CONSULT_RINGING, CONSULT_UP, TRANSFERER_LEFT, party_of_channel,
    party_of_dial_target, plan_answer, plan_dial, plan_hangup, plan_transfer)
from clinica_asterisk.calls.dial_options import dial_string_with_answer_routine, dial_targets, split_dial_string
from clinica_asterisk.calls.events import build_payload, transfer_keys, wanted_events

FMT = NumberFormat()


def answered(**fields):
    call = {"id": 7, "direction": "in", "did": "0443334000", "external_number": "0670219424",
            "internal_number": "806", "dst_numbers": ["806"], "answered_at": 10.0, "answered_by": "806",
            "ended_at": None, "transfers": 0, "transferred_to": "", "pending_transfer": ""}
    call.update(fields)
    return call


def apply(call, plan):
    return dict(call, **plan.changes)


@pytest.mark.parametrize("target, party", [
    ("IAX2/801/801", "801"),
    ("PJSIP/802", "802"),
    ("PJSIP/802/sip:802@10.0.0.5:5060", "802"),
    ("Local/0671234567#@from-internal/n", "0671234567"),
    ("Local/801@from-queue/n", "801"),
    ("DAHDI/g0/0671234567", ""),
    ("garbage", ""),
    ("", ""),
])
def test_who_a_dial_target_reaches(target, party):
    assert party_of_dial_target(target) == party


@pytest.mark.parametrize("channel, party", [
    ("PJSIP/802-0000001a", "802"),
    ("IAX2/805-4044", "805"),
    ("Local/0671234567#@from-internal-0000000a;1", "0671234567"),
    ("Local/805@from-internal-00000001;2", "805"),
    ("PJSIP/pstn1-00000003", ""),
    ("IAX2/pstn1-13763", ""),
    ("", ""),
])
def test_who_a_channel_reaches(channel, party):
    assert party_of_channel(channel) == party


@pytest.mark.parametrize("ds, changed", [
    ("IAX2/801/801&IAX2/802/802,20,HhtrU(macro-auto-blkvm)",
     "IAX2/801/801&IAX2/802/802,20,HhtrU(clinica-answer^600^grp^macro-auto-blkvm)"),
    # FreePBX 16: M(auto-blkvm) stays; M() runs before U().
    ("PJSIP/801&PJSIP/802,20,HhtrM(auto-blkvm)", "PJSIP/801&PJSIP/802,20,HhtrM(auto-blkvm)U(clinica-answer^600^grp)"),
    (",20,Hhtr", ",20,HhtrU(clinica-answer^600^grp)"),       # a hunt group: targets elsewhere
    ("IAX2/801/801", "IAX2/801/801"),                         # no options part: left alone
    ("", ""),
])
def test_ring_group_dial_string_gets_the_answer_routine(ds, changed):
    assert dial_string_with_answer_routine(ds, "600", "grp") == changed
    assert dial_string_with_answer_routine(changed, "600", "grp") == changed  # once


def test_dial_string_parts():
    assert split_dial_string("A&B,20,HU(x^1,2)") == ("A&B", "20", "HU(x^1,2)")
    assert dial_targets("IAX2/801/801&IAX2/802/802,20,Hh") == ["IAX2/801/801", "IAX2/802/802"]


def test_ring_group_reports_the_group_lists_the_members_and_names_who_answered():
    call = answered(answered_at=None, answered_by=None, internal_number="", dst_numbers=[])
    plan = plan_dial(call, {"target": "600", "group": "600", "members": "IAX2/801/801&IAX2/802/802"}, FMT, 1.0)
    assert plan.events == ("receivedTheCall",)
    assert plan.changes == {"internal_number": "600", "dst_numbers": ["600", "801", "802"]}
    call = apply(call, plan)
    plan = plan_answer(call, {"target": "600", "leg": "grp", "channel": "IAX2/802-3661"}, FMT, 2.0)
    assert plan.events == ("receivedTheCall", "answeredTheCall")
    assert plan.changes["answered_by"] == "802"
    payload = build_payload("answeredTheCall", dict(apply(call, plan), id=7))
    assert payload["internalNumber"] == "802"
    assert build_payload("receivedTheCall", dict(apply(call, plan), id=7))["internalNumber"] == "600"


def test_an_ivr_marks_the_call_pre_answered_once():
    call = answered(answered_at=None, answered_by=None)
    plan = plan_dial(call, {"target": "801", "caller_state": "Up"}, FMT, 1.0)
    assert plan.changes["pre_answered"] == 1
    assert "pre_answered" not in plan_dial(call, {"target": "801", "caller_state": "Ring"}, FMT, 1.0).changes


def test_blind_transfer_names_the_new_extension_once():
    call = answered()
    dial = plan_dial(call, {"target": "805", "options_variable": "D_OPTIONS"}, FMT, 20.0)
    assert dial.events == () and dial.changes["dst_numbers"] == ["806", "805"]
    assert dial.answer_leg == "bxfer"
    call = apply(call, dial)
    plan = plan_answer(call, {"target": "805", "leg": "bxfer", "channel": "PJSIP/805-00000007"}, FMT, 21.0)
    assert plan.events == transfer_keys(1, with_pair=True) == (
        "transferredTheCall/1", "receivedTheCall/1", "answeredTheCall/1")
    call = apply(call, plan)
    assert (call["transferred_to"], call["transfers"]) == ("805", 1)
    assert build_payload("transferredTheCall/1", call, "42") == {
        "generalCallID": "7", "internalNumber": "805", "companyID": "42", "requestType": "transferredTheCall"}
    assert build_payload("answeredTheCall/1", call)["internalNumber"] == "805"
    assert build_payload("receivedTheCall/1", call)["internalNumber"] == "805"
    # The same answer reported again: nothing new.
    assert plan_answer(call, {"target": "805", "leg": "bxfer"}, FMT, 22.0).events == ("answeredTheCall",)
    # A second transfer is a second one.
    assert plan_answer(call, {"target": "801", "leg": "bxfer"}, FMT, 30.0).events[0] == "transferredTheCall/2"


def test_two_members_answering_at_once_is_one_answer_not_a_transfer():
    call = answered(answered_by="801")
    for leg in ("ext", "grp", ""):
        plan = plan_answer(call, {"target": "802", "leg": leg, "channel": "PJSIP/802-1"}, FMT, 10.2)
        assert plan.events == ("answeredTheCall",) and plan.changes == {}


def test_dial_plans_the_leg_of_the_answer_routine():
    fresh = answered(answered_at=None, answered_by=None)
    assert plan_dial(fresh, {"target": "801", "options_variable": "D_OPTIONS"}, FMT, 1.0).answer_leg == "ext"
    assert plan_dial(fresh, {"target": "600", "options_variable": "ds"}, FMT, 1.0).answer_leg == "grp"
    assert plan_dial(answered(), {"target": "805", "transferer": "IAX2/807-1"}, FMT, 1.0).answer_leg == "xfer"
    assert plan_dial(None, {"target": "801", "options_variable": "D_OPTIONS"}, FMT, 1.0).answer_leg == ""


def test_the_pair_can_be_left_out():
    keys = transfer_keys(1, with_pair=True)
    assert wanted_events(("receivedTheCall", *keys), transfer_pair=False) == ("receivedTheCall", "transferredTheCall/1")
    assert wanted_events(keys, transfer_pair=True) == keys


def test_attended_transfer_completes_when_the_transferer_hangs_up():
    call = apply(answered(internal_number="807", answered_by="807", dst_numbers=["807"]),
                 plan_dial(answered(answered_by="807"), {"target": "805", "transferer": "IAX2/807-1"}, FMT, 20.0))
    consult = plan_answer(call, {"target": "805", "leg": "xfer", "channel": "IAX2/805-2"}, FMT, 21.0)
    assert consult.events == () and consult.changes == {"pending_transfer": "805"}
    call = apply(call, consult)
    done = plan_transfer(call, {"consult": CONSULT_UP, "consult_channel": "Local/805@from-internal-1;2"}, FMT, 24.0)
    assert done.events[0] == "transferredTheCall/1" and done.changes["transferred_to"] == "805"
    assert apply(call, done)["pending_transfer"] == ""


def test_attended_transfer_cancelled_is_no_transfer():
    call = answered(pending_transfer="805")
    plan = plan_transfer(call, {"consult": CONSULT_GONE}, FMT, 24.0)
    assert plan.events == () and plan.changes == {"pending_transfer": ""}
    # A later consultation forgets the earlier one.
    assert plan_dial(call, {"target": "802", "transferer": "IAX2/806-1"}, FMT, 30.0).changes["pending_transfer"] == ""


def test_transferer_leaving_while_the_target_rings_transfers_on_its_answer():
    call = answered()
    left = plan_transfer(call, {"consult": CONSULT_RINGING}, FMT, 24.0)
    assert left.events == () and left.changes == {"pending_transfer": TRANSFERER_LEFT}
    call = apply(call, left)
    plan = plan_answer(call, {"target": "805", "leg": "xfer", "channel": "IAX2/805-9"}, FMT, 26.0)
    assert plan.events[0] == "transferredTheCall/1" and plan.changes["transferred_to"] == "805"


def test_transfer_stage_on_calls_it_does_not_concern():
    assert plan_transfer(None, {"consult": CONSULT_UP}, FMT, 1.0).events == ()
    assert plan_transfer(answered(ended_at=5.0), {"consult": CONSULT_UP}, FMT, 1.0).events == ()
    assert plan_transfer(answered(direction="out"), {"consult": CONSULT_UP}, FMT, 1.0).events == ()


def test_transferred_call_hangs_up_once_as_transfer():
    call = answered(transfers=1, transferred_to="805")
    plan = plan_hangup(call, {"direction": "in", "dialstatus": "ANSWER", "answeredtime": "15"}, FMT, 25.0)
    assert plan.events == ("receivedTheCall", "hangupTheCall")
    assert plan.changes["disposition"] == "TRANSFER" and plan.changes["billsec"] == 15


def click_to_call(**fields):
    call = {"id": 9, "direction": "out", "origin": "api", "internal_number": "803", "dst_numbers": [],
            "answered_at": None, "ended_at": None, "trunk": ""}
    call.update(fields)
    return call


def test_click_to_call_arms_a_hangup_handler_on_its_extension_leg():
    assert plan_dial(click_to_call(), {"target": "803"}, FMT, 1.0).arm_hangup == "c2c"
    assert plan_dial(click_to_call(trunk="1"), {"target": "803"}, FMT, 1.0).arm_hangup == ""
    assert plan_dial(click_to_call(origin="pbx"), {"target": "803"}, FMT, 1.0).arm_hangup == ""


@pytest.mark.parametrize("status, disposition", [
    ("NOANSWER", "NOANSWER"), ("BUSY", "BUSY"), ("CHANUNAVAIL", "CHANUNAVAIL"), ("CANCEL", "NOANSWER"),
    ("", "NOANSWER"), ("ANSWER", "CHANUNAVAIL"), ("garbage", "NOANSWER"),
])
def test_click_to_call_nobody_answered_ends_without_a_push(status, disposition):
    plan = plan_hangup(click_to_call(), {"direction": "c2c", "dialstatus": status}, FMT, 9.0)
    assert plan.events == ()
    assert plan.changes == {"ended_at": 9.0, "billsec": 0, "disposition": disposition}


def test_click_to_call_that_reached_the_trunk_is_ended_by_the_trunk_leg():
    for call in (click_to_call(trunk="1"), click_to_call(answered_at=3.0), click_to_call(ended_at=5.0), None):
        plan = plan_hangup(call, {"direction": "c2c", "dialstatus": "ANSWER"}, FMT, 9.0)
        assert plan.changes == {} and plan.events == () and plan.create is None


def test_click_to_call_talk_time_starts_when_the_client_answers():
    from clinica_asterisk.calls.plans import plan_ring_out, talk_seconds
    call = click_to_call(internal_number="801")
    plan = plan_ring_out(call, {"number": "0670219424", "trunk": "1", "caller_state": "Up"}, FMT, 5.0)
    assert plan.changes["pre_answered"] == 1
    call = dict(apply(call, plan), answered_at=6.0)
    # ANSWEREDTIME counts from the extension's answer (4 s); the client talked 3.
    assert talk_seconds(call, {"dialstatus": "ANSWER", "answeredtime": "4"}, now=9.2) == 3


def test_blind_transfer_to_an_outside_number():
    from clinica_asterisk.calls.plans import plan_ring_out
    call = answered()
    plan = plan_ring_out(call, {"number": "0670219499", "trunk": "1", "caller_state": "Up"}, FMT, 20.0)
    assert plan.events == () and plan.answer_leg == "bxfer" and plan.changes["dst_numbers"] == ["806", "0670219499"]
    call = apply(call, plan)
    answer = plan_answer(call, {"target": "0670219499", "leg": "bxfer", "channel": "PJSIP/pstn1-00000009"}, FMT, 22.0)
    assert answer.events == ("transferredTheCall/1",)  # no received/answered pair: no employee
    assert answer.changes["transferred_to"] == "0670219499"


@pytest.mark.parametrize("odd", ["²", "８０１", "٨٠١", "801²"])
def test_digits_of_other_scripts_are_no_extension(odd):
    assert party_of_channel(f"PJSIP/{odd}-00000001") == ""
    assert party_of_dial_target(f"PJSIP/{odd}") == ""
    assert dial_string_with_answer_routine("PJSIP/801,20,Hh", odd, "grp") == "PJSIP/801,20,Hh"
