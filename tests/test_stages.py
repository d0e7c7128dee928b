"""The stage table: each stage's facts are a pure function of what it declares it reads,
and it writes back only what it declares."""

import pytest

from clinica_asterisk.calls import plans
from clinica_asterisk.calls.stages import (ANSWER_ROUTINE, CALL_ID, CALL_ORIGIN, HANGUP_ROUTINE, STAGES, Stage,
                                          channel_writes)
from clinica_asterisk.variables import CALLID_VARIABLE

# Arguments as the dialplan passes them, and odd ones.
ARGS = {
    "ring-in": [[], ["0443334000"], ["0443334000", "801"]],
    "dial": [[], ["801", "one"], ["600", "group"], ["600", ""], ["x", "group"]],
    "ring-out": [[], ["801", "0670219424", "pstn1"], ["", "+380670219424", ""]],
    "answer": [[], ["801", "ext"], ["600", "grp"], ["0670219424", "trunk"]],
    "transfer": [[], ["Local/805@from-internal-0000001a;2"], ["PJSIP/8${X})"]],
    "hangup": [[], ["in"], ["out"], ["c2c"]],
}
# Values as a channel may hold them: unset, set, and ${HuntMember} naming a variable.
VALUE_SETS = [{}, {"DEXTEN": "801", "HuntMember": "HuntMember1", "HuntMember1": "PJSIP/802", "ds": "PJSIP/801&PJSIP/802,20,Htr",
                   "CLINICA_LINKEDID": "1795738000.1", "${CHANNEL(state)}": "Up", "D_OPTIONS": "HhtrI"},
              {"HuntMember": "no such name!"}]


class Strict(dict):
    """Only the names a stage read: a fact function reaching for another one is a bug."""

    def __missing__(self, name):
        raise AssertionError(f"read {name!r}, which the stage does not declare")


def read_as_the_runner_does(stage: Stage, args, channel):
    first = stage.first_reads()
    values = Strict({name: channel.get(name, "") for name in first})
    for name in stage.then_reads(values, args):
        values[name] = channel.get(name, "")
    return values


def test_the_table_holds_the_six_stages_with_a_plan_each():
    assert list(STAGES) == ["ring-in", "dial", "ring-out", "answer", "transfer", "hangup"]
    assert all(callable(stage.plan) and stage.plan.__module__ == plans.__name__ for stage in STAGES.values())


@pytest.mark.parametrize("name", list(ARGS))
def test_facts_come_only_from_what_the_stage_declares_it_reads(name):
    stage = STAGES[name]
    assert CALLID_VARIABLE in stage.first_reads()
    for args in ARGS[name]:
        for channel in VALUE_SETS:
            values = read_as_the_runner_does(stage, args, channel)
            facts = stage.facts(values, args)
            assert all(isinstance(v, str) for v in facts.values())
            stage.fallback_facts(values, args)


def test_a_hunt_group_member_is_read_in_a_second_round_through_the_variable_huntmember_names():
    stage = STAGES["dial"]
    values = {"HuntMember": "HuntMember1", "DEXTEN": ""}
    assert stage.then_reads(values, ["600", "group"]) == ("HuntMember1",)
    assert stage.then_reads(values, ["801", "one"]) == ()
    assert stage.then_reads({"HuntMember": "X}${EVIL", "DEXTEN": ""}, ["600", "group"]) == ()
    channel = dict(VALUE_SETS[1])
    facts = stage.facts(read_as_the_runner_does(stage, ["600", "group"], channel), ["600", "group"])
    assert facts["members"] == "PJSIP/801&PJSIP/802&PJSIP/802"


def test_the_consultation_state_is_read_through_import_only_for_a_channel_name():
    stage = STAGES["transfer"]
    assert stage.then_reads({}, ["Local/805@from-internal-0000001a;2"]) == \
        ("${IMPORT(Local/805@from-internal-0000001a;2,CHANNEL(state))}",)
    assert stage.then_reads({}, ["PJSIP/8${X})"]) == ()
    up = {"${IMPORT(PJSIP/805-00000001,CHANNEL(state))}": "Up", CALLID_VARIABLE: ""}
    assert stage.facts(up, ["PJSIP/805-00000001"])["consult"] == plans.CONSULT_UP
    assert stage.facts({}, ["PJSIP/8${X})"])["consult"] == plans.CONSULT_GONE


def test_only_stages_that_may_store_a_new_call_find_it_by_linkedid_and_remember_its_id():
    new_call = {name for name, stage in STAGES.items() if stage.new_call}
    assert new_call == {"ring-in", "ring-out", "hangup"}
    assert new_call == {name for name, stage in STAGES.items() if CALL_ID in stage.writes}


def test_the_fallback_reads_are_derived_from_the_facts_that_use_them():
    hangup = STAGES["hangup"]
    assert hangup.fallback is CALL_ORIGIN
    assert set(CALL_ORIGIN.names) <= set(hangup.first_reads())
    values = {name: "" for name in hangup.first_reads()}
    values.update({"CLINICA_LINKEDID": "", "${CHANNEL(linkedid)}": "1795738000.7", "AMPUSER": "801"})
    assert hangup.fallback_facts(values, ["out"]) == {
        "linkedid": "1795738000.7", "caller": "", "did": "", "number": "", "caller_extension": "801"}


def test_writes_follow_the_plan_in_order():
    stage = STAGES["dial"]
    facts = {"target": "801", "options_variable": "D_OPTIONS", "options": "HhtrI"}
    plan = plans.Plan(answer_leg="ext", arm_hangup="c2c")
    assert channel_writes(stage, facts, plan, 7, remember_call_id=False) == [
        ("D_OPTIONS", "HhtrIU(clinica-answer^801^ext)"),
        ("CHANNEL(hangup_handler_push)", "clinica-hangup,s,1(c2c)"),
    ]
    assert channel_writes(STAGES["ring-in"], {}, plans.Plan(), 7, remember_call_id=True) == \
        [("__CLINICA_CALLID", "7")]


def test_options_already_holding_the_routine_are_not_written_again():
    facts = {"target": "801", "options_variable": "D_OPTIONS", "options": "HhtrIU(clinica-answer^801^ext)"}
    assert channel_writes(STAGES["dial"], facts, plans.Plan(answer_leg="ext"), 7, False) == []


@pytest.mark.parametrize("stage, plan, remember, kind", [
    ("answer", plans.Plan(), True, CALL_ID),
    ("hangup", plans.Plan(answer_leg="ext"), False, ANSWER_ROUTINE),
    ("ring-out", plans.Plan(arm_hangup="c2c"), False, HANGUP_ROUTINE),
])
def test_a_write_the_stage_does_not_declare_is_a_bug(stage, plan, remember, kind):
    facts = {"target": "801", "options_variable": "D_OPTIONS", "options": ""}
    with pytest.raises(RuntimeError, match=kind):
        channel_writes(STAGES[stage], facts, plan, 7, remember)
