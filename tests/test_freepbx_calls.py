"""The FreePBX-shaped calls recorded on Asterisk 22, hook by hook through the handlers over
real sockets, pushed to a real HTTP server: the exact events the CRM receives."""

import pytest
from support.binotel_shapes import check_push
from support.fake_asterisk import FakeCall, freepbx_calls
from support.player import our_args, play_freepbx_call, run_over_socket

from clinica_asterisk.hooks.stages import HookServices

CALLS = freepbx_calls()


# The CRM document's keys in its order, companyID always (empty: not configured), then the
# keys Binotel also sends (pbxNumber, did, srcNumber; disposition), requestType last.
def received_in(did, external, internal, src=None):
    return {"didNumber": did, "externalNumber": external, "internalNumber": internal,
            "generalCallID": "ID", "callType": "0", "companyID": "", "pbxNumber": did, "did": did,
            "srcNumber": src or external, "requestType": "receivedTheCall"}


def answered_in(did, external, internal):
    return {"didNumber": did, "externalNumber": external, "internalNumber": internal,
            "generalCallID": "ID", "callType": "0", "companyID": "", "pbxNumber": did,
            "requestType": "answeredTheCall"}


def received_out(external, internal):
    return {"externalNumber": external, "internalNumber": internal, "generalCallID": "ID",
            "callType": "1", "companyID": "", "requestType": "receivedTheCall"}


def answered_out(external, internal):
    return dict(received_out(external, internal), requestType="answeredTheCall")


def hangup(billsec, disposition):
    return {"generalCallID": "ID", "billsec": str(billsec), "companyID": "", "disposition": disposition,
            "requestType": "hangupTheCall"}


EXPECTED = {
    "in-801": [received_in("0443334000", "0670219424", "801"),
               answered_in("0443334000", "0670219424", "801"), hangup(4, "ANSWER")],
    # The group rings first (internalNumber 600); the member who answered is reported.
    "in-group": [received_in("0443334001", "0670219425", "600"),
                 answered_in("0443334001", "0670219425", "802"), hangup(3, "ANSWER")],
    # Caller id in E.164 comes out national (srcNumber keeps it as received); billsec is
    # the talk time, not CDR(billsec).
    "in-queue": [received_in("0443334003", "0670219427", "400", src="+380670219427"),
                 answered_in("0443334003", "0670219427", "802"), hangup(3, "ANSWER")],
    "in-miss": [received_in("0443334002", "0670219426", "803"), hangup(0, "CANCEL")],
    "in-busy": [received_in("0443334004", "0670219428", "804"), hangup(0, "BUSY")],
    "out-answer": [received_out("0670219424", "904"), answered_out("0670219424", "904"), hangup(3, "ANSWER")],
    "out-noanswer": [received_out("0671111111", "904"), hangup(0, "CANCEL")],
    "out-busy": [received_out("0672222222", "904"), hangup(0, "BUSY")],
    # Two trunks tried, one call: one receivedTheCall.
    "out-failover": [received_out("0993333333", "904"), answered_out("0993333333", "904"), hangup(2, "ANSWER")],
    # Originated without the API (no call id passed): the extension is taken from the channel.
    "click-to-call": [received_out("0670219424", "801"), answered_out("0670219424", "801"), hangup(4, "ANSWER")],
}

DISPOSITIONS = {
    "in-801": "ANSWER", "in-group": "ANSWER", "in-queue": "ANSWER", "in-miss": "CANCEL",
    "in-busy": "BUSY", "out-answer": "ANSWER", "out-noanswer": "CANCEL", "out-busy": "BUSY",
    "out-failover": "ANSWER", "click-to-call": "ANSWER",
}


def test_every_recorded_scenario_is_covered():
    assert set(CALLS) == set(EXPECTED)


@pytest.mark.parametrize("scenario", sorted(EXPECTED))
def test_recorded_call_pushes_exactly_these_events(scenario, crm, settings_for):
    services = HookServices.open(settings_for(crm.url))
    play_freepbx_call(services, CALLS[scenario])

    pushes = crm.pushes()
    ids = {p["generalCallID"] for p in pushes}
    assert len(ids) == 1, "one generalCallID for the whole call"
    call_id = ids.pop()
    assert call_id.isdigit() and 2**31 < int(call_id) < 2**63
    assert [dict(p, generalCallID="ID") for p in pushes] == EXPECTED[scenario]
    for push in pushes:
        check_push(push)
        assert list(push) == list(EXPECTED[scenario][pushes.index(push)])  # Binotel's key order


def test_without_the_extra_keys_the_pushes_hold_the_crm_document_s_alone(crm, settings_for):
    services = HookServices.open(settings_for(crm.url, push_extra_keys="no", company_id="3041"))
    play_freepbx_call(services, CALLS["in-801"])
    assert [dict(p, generalCallID="ID") for p in crm.pushes()] == [
        {"didNumber": "0443334000", "externalNumber": "0670219424", "internalNumber": "801", "generalCallID": "ID",
         "callType": "0", "companyID": "3041", "requestType": "receivedTheCall"},
        {"didNumber": "0443334000", "externalNumber": "0670219424", "internalNumber": "801", "generalCallID": "ID",
         "callType": "0", "companyID": "3041", "requestType": "answeredTheCall"},
        {"generalCallID": "ID", "billsec": "4", "companyID": "3041", "requestType": "hangupTheCall"},
    ]


@pytest.mark.parametrize("scenario", sorted(EXPECTED))
def test_recorded_call_is_stored_with_its_facts(scenario, crm, settings_for):
    services = HookServices.open(settings_for(crm.url))
    play_freepbx_call(services, CALLS[scenario])
    call_id = int(crm.pushes()[0]["generalCallID"])
    call = services.store.call(call_id)
    assert call["disposition"] == DISPOSITIONS[scenario]
    assert call["ended_at"] is not None
    assert call["recording_file"].endswith(".wav")
    assert call["linkedid"] == CALLS[scenario][0].variables["${CHANNEL(linkedid)}"]


def test_ring_group_stores_every_member_tried(crm, settings_for):
    services = HookServices.open(settings_for(crm.url))
    play_freepbx_call(services, CALLS["in-group"])
    call = services.store.call(int(crm.pushes()[0]["generalCallID"]))
    assert call["internal_number"] == "600"
    assert sorted(call["dst_numbers"]) == ["600", "801", "802"]
    assert call["answered_by"] == "802"


def test_failover_stores_the_trunk_that_carried_the_call(crm, settings_for):
    services = HookServices.open(settings_for(crm.url))
    play_freepbx_call(services, CALLS["out-failover"])
    call = services.store.call(int(crm.pushes()[0]["generalCallID"]))
    assert call["trunk"] == "2"


def test_the_call_id_is_inherited_by_every_later_leg(crm, settings_for):
    services = HookServices.open(settings_for(crm.url))
    _, call = play_freepbx_call(services, CALLS["in-queue"])
    set_by = [(label, name) for label, name, _ in call.set_on_channel if name == "__CLINICA_CALLID"]
    assert set_by == [("ring-in", "__CLINICA_CALLID")]


def test_extension_hook_chains_freepbx_answer_routine(crm, settings_for):
    services = HookServices.open(settings_for(crm.url))
    _, call = play_freepbx_call(services, CALLS["in-queue"])
    options = [value for label, name, value in call.set_on_channel if name == "D_OPTIONS"]
    assert options == ["HhtrIU(clinica-answer^803^ext^macro-auto-blkvm)",
                       "HhtrIU(clinica-answer^802^ext^macro-auto-blkvm)"]


def test_trunk_hook_adds_the_answer_routine_on_every_trunk_tried(crm, settings_for):
    services = HookServices.open(settings_for(crm.url))
    _, call = play_freepbx_call(services, CALLS["out-failover"])
    options = [value for label, name, value in call.set_on_channel if name == "DIAL_TRUNK_OPTIONS"]
    assert options == ["U(clinica-answer^0993333333^trunk)"] * 2


def test_every_hook_leaves_a_status_for_the_dialplan(crm, settings_for):
    services = HookServices.open(settings_for(crm.url))
    _, call = play_freepbx_call(services, CALLS["in-group"])
    statuses = [(label, value) for label, name, value in call.set_on_channel if name == "CLINICA_STATUS"]
    assert statuses == [("ring-in", "SKIPPED"), ("predial-ringall", "SENT"), ("predial-one", "SKIPPED"),
                        ("predial-one", "SKIPPED"), ("answer", "SENT"), ("hangup", "SENT")]


def test_click_to_call_from_the_api_keeps_the_id_it_answered_with(crm, settings_for):
    services = HookServices.open(settings_for(crm.url))
    with services.store.transaction():
        call_id = services.store.insert_call({"direction": "out", "origin": "api", "started_at": 1.0,
                                              "internal_number": "801", "external_number": "0670219424",
                                              "src_number": "0670219424"})
    call = FakeCall()
    call.inherited["CLINICA_CALLID"] = str(call_id)  # Originate's Variable: __CLINICA_CALLID=<id>
    statuses = [run_over_socket(services, call, s.with_args(our_args(s)))[0].status
                for s in CALLS["click-to-call"]]
    assert statuses == ["SKIPPED", "SKIPPED", "SENT", "SENT", "SENT"]
    assert [dict(p, generalCallID="ID") for p in crm.pushes()] == EXPECTED["click-to-call"]
    assert {p["generalCallID"] for p in crm.pushes()} == {str(call_id)}
    assert services.store.call(call_id)["linkedid"] == "1795715147.29"
