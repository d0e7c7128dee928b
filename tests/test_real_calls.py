"""Real calls on a real Asterisk: for each combination of Asterisk, FreePBX shape and hook
mode, tests/support/real_pbx.py places every scenario's call through a FreePBX-shaped PBX with
clinica-asterisk installed as a user installs it, and these tests compare what the CRM
stand-in received (and what stats/call-details answers) with EXPECTED below.

Needs an Asterisk (ASTERISK_PREFIX_22 / ASTERISK_PREFIX_20, or the tarballs in
../shared/asterisk/): skipped without one, failed under CI.  As root with `unshare`, two
combinations run at once, each in a network namespace of its own; otherwise one after
another in the current namespace (then no other Asterisk may use the lab's ports).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest

from support import real_pbx

# (Asterisk, FreePBX shape, hook mode), in the order they start: two at a time when
# namespaces allow, a script-mode run (Python per hook) beside a FastAGI one.
COMBINATIONS: Tuple[Tuple[str, str, str], ...] = (
    ("22", "pbx17", "script"),
    ("20", "pbx16", "fastagi"),
    ("20", "pbx16", "script"),
    ("22", "pbx17", "fastagi"),
)

# What each scenario must produce.  pushes: the events in order, as requestType[:internalNumber]
# (received, answered, transferred, hangup), "*" = any internalNumber (may be empty), a
# trailing "?" = optional; hangup:<billsec>[~<tolerance>] (default tolerance 1 s), "*" = not
# checked.  details: stats/call-details fields: disposition=A|B (one of), disposition!=A,
# billsec=N (within 1 s), waitsec>=N, internalNumber=N, dstNumbers>=A,B (contains).
EXPECTED: Dict[str, Tuple[str, str]] = {
    # scenario         pushes                                            call-details
    "in-801":         ("received:801 answered:801 hangup:4",             "disposition=ANSWER billsec=4 internalNumber=801"),
    "in-group":       ("received:600 answered:802 hangup:3",             "disposition=ANSWER billsec=3 internalNumber=802 dstNumbers>=600,802"),
    # Hunt group 601: 803 rings 4 s unanswered, then 802 answers. Group 602 rings 801 and an
    # outside number together; the outside number (the trunk's far end) answers first.
    "in-hunt":        ("received:601 answered:802 hangup:3",             "disposition=ANSWER billsec=3 internalNumber=802 dstNumbers>=601,803,802"),
    "in-group-ext":   ("received:602 answered:0670219498 hangup:3",      "disposition=ANSWER billsec=3 internalNumber=0670219498 dstNumbers>=602,801,0670219498"),
    "in-queue":       ("received:400 answered:802 hangup:3",             "disposition=ANSWER billsec=3 internalNumber=802"),
    "in-miss":        ("received:803 hangup:0",                          "disposition=CANCEL|NOANSWER billsec=0"),
    "in-busy":        ("received:804 hangup:0",                          "disposition=BUSY"),
    "in-ivr":         ("received:801 answered:801 hangup:4",             "disposition=ANSWER billsec=4 waitsec>=3"),
    "in-ivr-abandon": ("received:* hangup:0",                            "disposition=CANCEL billsec=0"),
    # A transfer: Binotel's transferredTheCall, then (CLINICA_TRANSFER_PAIR, on by default)
    # received + answered naming the extension that now has the client; one hangup.
    "in-xfer-blind":  ("received:806 answered:806 transferred:805 received:805 answered:805 hangup:14~2",
                       "disposition=TRANSFER internalNumber=805 dstNumbers>=806,805"),
    "in-xfer-att":    ("received:807 answered:807 transferred:805 received:805 answered:805 hangup:14~2",
                       "disposition=TRANSFER internalNumber=805 dstNumbers>=807,805"),
    # Blind transfers to a ring group (802 answers) and to an outside number: the pair is
    # sent for an extension only (an outside number is no employee).
    "in-xfer-group":  ("received:809 answered:809 transferred:802 received:802 answered:802 hangup:*",
                       "disposition=TRANSFER internalNumber=802 dstNumbers>=809,600,802"),
    "in-xfer-out":    ("received:810 answered:810 transferred:0670219499 hangup:*",
                       "disposition=TRANSFER internalNumber=0670219499 dstNumbers>=810,0670219499"),
    "in-vm-nomsg":    ("received:808 hangup:0",                          "disposition=VM"),
    "in-vm-msg":      ("received:808 hangup:0",                          "disposition=VM-SUCCESS"),
    "out-answer":     ("received:904 answered hangup:3",                 "disposition=ANSWER"),
    "out-noanswer":   ("received:904 hangup:0",                          "disposition=NOANSWER|CANCEL"),
    "out-busy":       ("received:904 hangup:0",                          "disposition=BUSY"),
    "out-failover":   ("received:904 answered hangup:2",                 "disposition=ANSWER"),
    "c2c-answer":     ("received:801 answered hangup:3",                 "disposition=ANSWER"),
    # limitCallTime 2: the client (who would talk 10 s) is cut off after 2 s of talk.
    "c2c-limit":      ("received:805 answered hangup:2",                 "disposition=ANSWER billsec=2"),
    # The client was never called: no push; call-details tells how it ended.
    "c2c-noanswer":   ("",                                               "disposition=NOANSWER billsec=0"),
}

EVENT_TYPES = {"received": "receivedTheCall", "answered": "answeredTheCall",
               "transferred": "transferredTheCall", "hangup": "hangupTheCall"}

# What the PBX itself must have done (its log and voicemail spool), whatever
# clinica-asterisk reports: a failure here is the lab's, not the product's.
LAB_EXPECTED: Dict[str, Dict[str, Any]] = {
    "in-801": {"phones_answered": ["IAX2/801"]},
    "in-group": {"phones_answered": ["IAX2/802"]},
    "in-queue": {"phones_answered": ["IAX2/802"]},
    "in-miss": {"phones_answered": []},
    "in-busy": {"phones_answered": []},
    "in-ivr": {"ivr_digit_1": True, "phones_answered": ["IAX2/801"]},
    "in-ivr-abandon": {"ivr_digit_1": False, "phones_answered": []},
    "in-xfer-blind": {"blind_transfer_started": True, "transferee_sent_to_805": True,
                      "phones_answered": ["IAX2/805", "IAX2/806"]},
    "in-xfer-att": {"attended_transfer_started": True, "attended_transfer_completed": True,
                    "phones_answered": ["IAX2/805", "IAX2/807"]},
    "in-xfer-group": {"blind_transfer_started": True, "phones_answered": ["IAX2/802", "IAX2/809"]},
    "in-xfer-out": {"blind_transfer_started": True, "phones_answered": ["IAX2/810"]},
    "in-vm-nomsg": {"voicemail_started": True, "voicemail_recording": False, "messages": 0},
    "in-vm-msg": {"voicemail_started": True, "voicemail_recording": True, "messages": 1},
}

SCENARIOS = {s.name: s for s in real_pbx.SCENARIOS}
assert set(EXPECTED) == set(SCENARIOS), "EXPECTED and real_pbx.SCENARIOS must name the same scenarios"


def combo_id(combo: Tuple[str, str, str]) -> str:
    return "-".join(combo)


# ---- running the combinations (in the background, two at a time when possible) ------------

class Runner:
    def __init__(self, combos: List[Tuple[str, str, str]], parallel: int, workdirs):
        self.executor = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="real-pbx")
        self.futures: Dict[Tuple[str, str, str], Future] = {
            combo: self.executor.submit(real_pbx.run_combination, *combo, workdirs(combo)) for combo in combos}

    def result(self, combo: Tuple[str, str, str]) -> Dict[str, Any]:
        if combo not in self.futures:
            pytest.skip(f"{combo_id(combo)} was not selected")
        # Bounded: the driver itself gives up after its own timeout.
        return self.futures[combo].result(timeout=3 * real_pbx.COMBINATION_TIMEOUT_S)

    def close(self) -> None:
        for future in self.futures.values():
            future.cancel()
        real_pbx.stop_children()
        self.executor.shutdown(wait=True)


def _selected_combinations(session) -> List[Tuple[str, str, str]]:
    wanted = set()
    for item in session.items:
        callspec = getattr(item, "callspec", None)
        if item.module is not None and item.module.__name__ == __name__ and callspec is not None:
            combo = callspec.params.get("combo")
            if combo:
                wanted.add(tuple(combo))
    return [c for c in COMBINATIONS if c in wanted]


KEEP_RUNS_S = 6 * 3600


def runs_directory() -> Path:
    """Where this session's runs keep their files (logs, recordings, the JSON result):
    <tmp>/clinica-real-calls/<date-time>-…/<combination>/.  Not pytest's tmp_path, which
    another pytest session on this machine may prune while the calls still run; runs older
    than KEEP_RUNS_S are removed here instead."""
    root = Path(tempfile.gettempdir()) / "clinica-real-calls"
    root.mkdir(exist_ok=True)
    for old in root.iterdir():
        try:
            if time.time() - old.stat().st_mtime > KEEP_RUNS_S:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass
    return Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), dir=root))


@pytest.fixture(scope="session")
def real_runs(request):
    combos = _selected_combinations(request.session)
    reason = real_pbx.asterisk_unavailable_reason(sorted({c[0] for c in combos}))
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"{reason}: CI must run the real-call tests")
        pytest.skip(reason)
    parallel = 2 if real_pbx.namespaces_available() else 1
    session_dir = runs_directory()
    runner = Runner(combos, parallel, lambda combo: session_dir / combo_id(combo))
    yield runner
    runner.close()
    summary = [f"real calls ({parallel} at a time; files in {session_dir}):"]
    for combo in combos:
        outcome = _results.get(combo)
        if isinstance(outcome, dict):
            run = outcome["_run"]
            where = "own network namespace" if run["combination"]["namespace"] else "current namespace"
            summary.append(f"  {combo_id(combo)}: {run['timings'].get('stopped_s')} s, "
                           f"{run['pushes_total']} pushes, {where}")
        elif outcome is not None:
            summary.append(f"  {combo_id(combo)}: {outcome}")
    _show(request.config, summary)


def _show(config, lines: List[str]) -> None:
    """Lines on the terminal from a session fixture's teardown (which runs captured)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None:
        return
    disabled = getattr(capture, "global_and_fixture_disabled", None)
    with (disabled() if disabled else contextlib.nullcontext()):
        reporter.write_line("")
        for line in lines:
            reporter.write_line(line)


_results_lock = threading.Lock()
_results: Dict[Tuple[str, str, str], Any] = {}


def run_of(real_runs: Runner, combo) -> Dict[str, Any]:
    combo = tuple(combo)
    with _results_lock:
        if combo not in _results:
            try:
                _results[combo] = real_runs.result(combo)
            except real_pbx.LabError as exc:
                _results[combo] = exc
    outcome = _results[combo]
    if isinstance(outcome, Exception):
        pytest.fail(f"{combo_id(combo)}: the lab did not run: {outcome}")
    return outcome


# ---- checks ---------------------------------------------------------------------------------

def parse_pushes(spec: str) -> List[Dict[str, Any]]:
    steps = []
    for token in spec.split():
        name, _, arg = token.partition(":")
        optional = name.endswith("?")
        name = name.rstrip("?")
        step: Dict[str, Any] = {"type": EVENT_TYPES[name], "optional": optional}
        if name == "hangup":
            if arg and arg != "*":
                value, _, tolerance = arg.partition("~")
                step["billsec"], step["tolerance"] = int(value), int(tolerance or 1)
        elif arg and arg != "*":
            step["internal"] = arg
        steps.append(step)
    return steps


def observed(run: Dict[str, Any], scenario: str) -> str:
    part = run[scenario]
    return json.dumps({"call_ids": part["call_ids"], "pushes": part["pushes"], "details": part["details"],
                       "lab": part["lab"], "placed": part["placed"], "logs": run["_run"]["logs"]["workdir"]},
                      ensure_ascii=False, indent=1)


def match_events(pushes: List[Dict[str, str]], steps: List[Dict[str, Any]]) -> Optional[List[Optional[Dict[str, str]]]]:
    """The pushes matched to the steps in order (None for a missing optional step), or None
    when the sequence of request types is not the expected one."""
    matched: List[Optional[Dict[str, str]]] = []
    i = 0
    for step in steps:
        if i < len(pushes) and pushes[i].get("requestType") == step["type"]:
            matched.append(pushes[i])
            i += 1
        elif step["optional"]:
            matched.append(None)
        else:
            return None
    return matched if i == len(pushes) else None


def check_pushes(run: Dict[str, Any], name: str) -> List[str]:
    scenario = SCENARIOS[name]
    part = run[name]
    pushes = part["pushes"]
    steps = parse_pushes(EXPECTED[name][0])
    problems = []
    if not pushes and all(s["optional"] for s in steps):
        return problems
    ids = {str(p.get("generalCallID", "")) for p in pushes}
    if len(part["call_ids"]) != 1 or len(ids) != 1:
        problems.append(f"expected the pushes of one call (one generalCallID), got {sorted(ids) or 'none'}")
    if scenario.c2c and part["call_ids"] and ids - {part["call_ids"][0]}:
        problems.append(f"pushes do not carry the API's generalCallID {part['call_ids'][0]}")
    expected_types = " ".join(s["type"] + ("?" if s["optional"] else "") for s in steps)
    matched = match_events(pushes, steps)
    if matched is None:
        problems.append(f"events {[p.get('requestType') for p in pushes]}, expected {expected_types}")
        return problems
    for step, push in zip(steps, matched):
        if push is None:
            continue
        kind = step["type"]
        if "internal" in step and push.get("internalNumber") != step["internal"]:
            problems.append(f"{kind}: internalNumber {push.get('internalNumber')!r}, expected {step['internal']!r}")
        if kind in ("receivedTheCall", "answeredTheCall"):
            if push.get("externalNumber") != scenario.number:  # national format
                problems.append(f"{kind}: externalNumber {push.get('externalNumber')!r}, expected {scenario.number!r}")
            if push.get("callType") != scenario.call_type:
                problems.append(f"{kind}: callType {push.get('callType')!r}, expected {scenario.call_type!r}")
            if scenario.did and push.get("didNumber") != scenario.did:
                problems.append(f"{kind}: didNumber {push.get('didNumber')!r}, expected {scenario.did!r}")
        if kind == "hangupTheCall" and "billsec" in step:
            billsec = push.get("billsec", "")
            if not str(billsec).isdigit() or abs(int(billsec) - step["billsec"]) > step["tolerance"]:
                problems.append(f"hangupTheCall: billsec {billsec!r}, expected {step['billsec']}±{step['tolerance']}")
    return problems


def check_details(run: Dict[str, Any], name: str) -> List[str]:
    part = run[name]
    if not part["call_ids"]:
        return ["no call: no push and no generalCallID from the API"]
    call_id = part["call_ids"][0]
    d = part["details"].get(call_id)
    if d is None:
        return [f"stats/call-details has no entry for {call_id}"]
    problems = []
    for rule in EXPECTED[name][1].split():
        if "!=" in rule:
            key, value = rule.split("!=")
            if str(d.get(key)) in value.split("|"):
                problems.append(f"{key} {d.get(key)!r}, expected anything but {value}")
        elif ">=" in rule:
            key, value = rule.split(">=")
            if key == "dstNumbers":
                # Binotel's shape: a list of objects, each with its dstNumber.
                numbers = [n.get("dstNumber") if isinstance(n, dict) else n for n in d.get(key) or []]
                missing = [v for v in value.split(",") if v not in numbers]
                if missing:
                    problems.append(f"dstNumbers {d.get(key)!r} lacks {missing}")
            elif not str(d.get(key, "")).lstrip("-").isdigit() or int(d[key]) < int(value):
                problems.append(f"{key} {d.get(key)!r}, expected >= {value}")
        else:
            key, value = rule.split("=")
            if key in ("billsec", "waitsec"):
                if not str(d.get(key, "")).isdigit() or abs(int(d[key]) - int(value)) > 1:
                    problems.append(f"{key} {d.get(key)!r}, expected {value}±1")
            elif str(d.get(key)) not in value.split("|"):
                problems.append(f"{key} {d.get(key)!r}, expected {value}")
    if name == "c2c-noanswer" and d.get("disposition") == "ONLINE":
        problems.append("still ONLINE after the call ended")
    return problems


# ---- the tests ------------------------------------------------------------------------------

CASES = [pytest.param(combo, name, id=f"{combo_id(combo)}/{name}") for combo in COMBINATIONS for name in EXPECTED]
RUNS = [pytest.param(combo, id=combo_id(combo)) for combo in COMBINATIONS]


@pytest.mark.parametrize("combo,scenario", CASES)
def test_pushes(real_runs, combo, scenario):
    run = run_of(real_runs, combo)
    problems = check_pushes(run, scenario)
    assert not problems, "\n".join(problems) + "\nobserved:\n" + observed(run, scenario)


@pytest.mark.parametrize("combo,scenario", CASES)
def test_call_details(real_runs, combo, scenario):
    run = run_of(real_runs, combo)
    problems = check_details(run, scenario)
    assert not problems, "\n".join(problems) + "\nobserved:\n" + observed(run, scenario)


@pytest.mark.parametrize("combo", RUNS)
def test_no_push_unclaimed_or_twice(real_runs, combo):
    """Every push belongs to a scenario's call (none from, e.g., the attended transfer's
    consultation call) and arrived once."""
    run = run_of(real_runs, combo)["_run"]
    assert not run["unclaimed"], "pushes of no scenario:\n" + json.dumps(run["unclaimed"], ensure_ascii=False, indent=1)
    assert not run["duplicates"], "pushes received twice:\n" + json.dumps(run["duplicates"], ensure_ascii=False, indent=1)


@pytest.mark.parametrize("combo", RUNS)
def test_lab_calls_did_what_the_scenarios_say(real_runs, combo):
    """The PBX's own log and spool: every call ended, the IVR took the digit, the transfers
    happened, voicemail recorded a message only when it should.  A failure here is the lab's."""
    run = run_of(real_runs, combo)
    problems = []
    if not run["_run"]["calls_done"]:
        problems.append("calls still up when the driver stopped waiting")
    for name, scenario in SCENARIOS.items():
        lab = run[name]["lab"]
        if scenario.call_type == "0" and lab.get("calls") != 1:
            problems.append(f"{name}: {lab.get('calls')} calls in the PBX log, expected 1")
        for key, want in LAB_EXPECTED.get(name, {}).items():
            got = len(lab.get("voicemail_messages", [])) if key == "messages" else lab.get(key)
            if got != want:
                problems.append(f"{name}: {key} {got!r}, expected {want!r}")
        for message in lab.get("voicemail_messages", []):
            if name == "in-vm-msg" and (message.get("duration") or 0) < 2:
                problems.append(f"{name}: the message lasts {message.get('duration')} s, expected a few seconds")
    assert not problems, "\n".join(problems) + "\nlogs: " + run["_run"]["logs"]["pbx_messages"]


@pytest.mark.parametrize("combo", RUNS)
def test_outbox_drained(real_runs, combo):
    run = run_of(real_runs, combo)["_run"]
    assert run["outbox_waiting"] == 0, f"{run['outbox_waiting']} events never delivered; log: {run['logs']['agi_log']}"
