"""``clinica-agi`` run as Asterisk runs an AGI script (a process, env block on stdin,
commands on stdout), against the sessions recorded on a real Asterisk 22."""

import os

import pytest
from support.fake_asterisk import FakeCall, asterisk22_sessions, run_script
from support.player import SCRIPT, Script, args_of, play

SESSIONS = asterisk22_sessions()


def recorded_calls():
    """The recorded sessions grouped by call (linkedid), in order."""
    calls = {}
    for session in SESSIONS:
        calls.setdefault(session.variables["${CHANNEL(linkedid)}"], []).append(session)
    return list(calls.values())


def script_env(tmp_path, url, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLINICA_")}
    # The answer hook waits for its push like the others: the tests compare exact outcomes.
    env.update(CLINICA_CRM_PUSH_URL=url, CLINICA_DATA_DIR=str(tmp_path / "data"),
               CLINICA_ENV_FILE=str(tmp_path / "empty.env"), CLINICA_ANSWER_DEADLINE_MS="2000", **extra)
    (tmp_path / "empty.env").write_text("")
    return env


def test_recordings_hold_the_four_calls():
    assert [[s.label for s in c] for c in recorded_calls()] == [
        ["ring-in", "answer", "hangup-in"], ["ring-group", "answer", "hangup-in"],
        ["ring-miss", "hangup-in"], ["ring-out", "answer", "hangup-out"]]


def _received_in(did, external, internal, src):
    return {"didNumber": did, "externalNumber": external, "internalNumber": internal, "callType": "0",
            "pbxNumber": did, "did": did, "srcNumber": src, "requestType": "receivedTheCall"}


def _answered_in(did, external, internal):
    return {"didNumber": did, "externalNumber": external, "internalNumber": internal, "callType": "0",
            "pbxNumber": did, "requestType": "answeredTheCall"}


EXPECTED = [  # generalCallID and companyID taken out (checked apart)
    [_received_in("0443334000", "0670219424", "801", "0670219424"), _answered_in("0443334000", "0670219424", "801"),
     {"billsec": "3", "disposition": "ANSWER", "requestType": "hangupTheCall"}],
    [_received_in("0443334001", "0670219425", "600", "0670219425"), _answered_in("0443334001", "0670219425", "802"),
     {"billsec": "2", "disposition": "ANSWER", "requestType": "hangupTheCall"}],
    [_received_in("0443334002", "0670219426", "803", "0670219426"),
     {"billsec": "0", "disposition": "CANCEL", "requestType": "hangupTheCall"}],
    [{"externalNumber": "0670219424", "internalNumber": "904", "callType": "1", "requestType": "receivedTheCall"},
     {"externalNumber": "0670219424", "internalNumber": "904", "callType": "1", "requestType": "answeredTheCall"},
     {"billsec": "2", "disposition": "ANSWER", "requestType": "hangupTheCall"}],
]


@pytest.mark.parametrize("index", range(4))
def test_script_replays_recorded_call_and_pushes_exact_events(index, crm, tmp_path):
    played = play(recorded_calls()[index], Script(script_env(tmp_path, crm.url, CLINICA_COMPANY_ID="3041")))
    conversations = [p.conversation for p in played]

    pushes = crm.pushes()
    call_ids = {p.pop("generalCallID") for p in pushes}
    assert len(call_ids) == 1
    assert all(p.pop("companyID") == "3041" for p in pushes)
    assert pushes == EXPECTED[index]
    for conv in conversations:
        assert conv.returncode == 0
        # Only well-formed commands reached Asterisk: no debug output, nothing it refused.
        assert not any(a.startswith("510") for a in conv.answers), conv.commands
        assert conv.commands[-1].startswith('SET VARIABLE "CLINICA_STATUS"')
        assert conv.extra_stderr == ""  # pyst2's debug output and our log stay off Asterisk's console


def test_script_reports_status_and_keeps_the_call_id_for_later_legs(crm, tmp_path):
    ring_in = recorded_calls()[0][0]
    call = FakeCall()
    conv = run_script(SCRIPT, call, ring_in.with_args(args_of(ring_in)), script_env(tmp_path, crm.url))
    assert ("ring-in", "CLINICA_STATUS", "SENT") in call.set_on_channel
    assert call.inherited["CLINICA_CALLID"] == crm.pushes()[0]["generalCallID"]
    assert conv.closed_by_script


def test_script_with_invalid_configuration_lets_the_call_go_on(crm, tmp_path):
    ring_in = recorded_calls()[0][0]
    call = FakeCall()
    env = script_env(tmp_path, crm.url, CLINICA_HOOK_DEADLINE_MS="soon")
    conv = run_script(SCRIPT, call, ring_in.with_args(args_of(ring_in)), env)
    assert conv.returncode == 0
    assert ("ring-in", "CLINICA_STATUS", "FAILED") in call.set_on_channel
    verbose = [c for c in conv.commands if c.startswith("VERBOSE")]
    assert verbose and "CLINICA_HOOK_DEADLINE_MS" in verbose[0]
    assert crm.pushes() == []


def test_script_with_unknown_stage_says_so(crm, tmp_path):
    session = recorded_calls()[0][0].with_args(["ring-sideways"])
    call = FakeCall()
    conv = run_script(SCRIPT, call, session, script_env(tmp_path, crm.url))
    assert ("ring-in", "CLINICA_STATUS", "NOTFOUND") in call.set_on_channel
    assert any("unknown stage" in c for c in conv.commands)


def test_script_without_asterisk_on_stdin_exits_quietly(tmp_path, crm):
    import subprocess

    done = subprocess.run(SCRIPT, input=b"", capture_output=True, env=script_env(tmp_path, crm.url), timeout=15)
    assert done.returncode == 0
    assert done.stdout == b""
    assert b"no AGI session" in done.stderr


def test_a_script_hook_closes_its_store_before_it_exits(crm, tmp_path):
    # The hook's process leaves its objects to the exit, not to the collector
    # (hooks.script.main), so it closes its store itself: as the last connection it
    # checkpoints the WAL and removes it, as any orderly close does.
    ring_in = recorded_calls()[0][0]
    conv = run_script(SCRIPT, FakeCall(), ring_in.with_args(args_of(ring_in)), script_env(tmp_path, crm.url))
    assert conv.returncode == 0
    assert (tmp_path / "data" / "clinica.sqlite3").exists()
    assert not (tmp_path / "data" / "clinica.sqlite3-wal").exists()
