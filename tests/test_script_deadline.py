"""Script mode: the hook's deadline is what the call waits, so it counts from the moment
the process was started (Asterisk's fork), not from when Python got round to reading the
env block.  A slow start-up leaves the hook less time, never the call more."""

import os
import re
import sys
import time

import pytest
from support.fake_asterisk import FakeCall, asterisk22_sessions, run_script
from support.faults import figure, outbox_rows, wait_until

SCRIPT = os.path.join(os.path.dirname(sys.executable), "clinica-agi")
# A call from a trunk to 801, as recorded on Asterisk 22: one receivedTheCall to send.
RING_IN = next(s for s in asterisk22_sessions() if s.label == "ring-in").with_args(["ring-in", "0443334000", "801"])
START_DELAY_S = 0.6  # what a loaded host may cost between Asterisk's fork and Python's first line


def env_for(tmp_path, url, deadline_ms):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLINICA_")}
    (tmp_path / "empty.env").write_text("")
    env.update(CLINICA_CRM_PUSH_URL=url, CLINICA_DATA_DIR=str(tmp_path / "data"),
               CLINICA_ENV_FILE=str(tmp_path / "empty.env"), CLINICA_HOOK_DEADLINE_MS=str(deadline_ms),
               CLINICA_DELIVER_TIMEOUT_MS="1000")
    return env


def slow_start(tmp_path, url, deadline_ms):
    """The hook started the way a loaded host starts it: the process exists, Python runs
    only ``START_DELAY_S`` later."""
    call = FakeCall()
    started = time.monotonic()
    conv = run_script(["sh", "-c", f"sleep {START_DELAY_S}; exec {SCRIPT}"], call,
                      RING_IN, env_for(tmp_path, url, deadline_ms))
    held_s = time.monotonic() - started
    log = (tmp_path / "data" / "clinica-agi.log").read_text()
    ms = int(re.search(r"stage=ring-in outcome=\w+ ms=(\d+)", log).group(1))
    return conv, call.status_of(RING_IN.label), ms, held_s


def test_the_hooks_time_counts_from_the_process_start(crm, tmp_path):
    conv, status, ms, _ = slow_start(tmp_path, crm.url, 5000)
    assert conv.returncode == 0 and status == "SENT"
    assert ms >= START_DELAY_S * 1000  # the slow start is part of what the call waited


@pytest.mark.fault
def test_a_slow_start_and_a_hung_crm_still_end_the_hook_within_its_deadline(hanging_crm, tmp_path):
    conv, status, ms, held_s = slow_start(tmp_path, hanging_crm.url, 1500)
    figure(f"script mode, {START_DELAY_S} s slow start, CRM never answering (deadline 1500 ms)",
           f"hook logged {ms} ms, process held the call {held_s * 1000:.0f} ms from spawn to exit")
    assert status == "QUEUED"
    assert START_DELAY_S * 1000 <= ms <= 1500
    # Spawning sh and the pipes' last exchange are on top of the deadline; nothing else is.
    assert held_s < 1.5 + 0.4
    # The push went on after the hook, in a child process, to its own limit (1 s), and
    # that process wrote down that it failed: the event is free for the worker again.
    wait_until(lambda: [r["attempts"] for r in outbox_rows(tmp_path / "data")] == [1], "the outcome recorded")
    (row,) = outbox_rows(tmp_path / "data")
    assert row["lease_owner"] is None and row["last_error"] == "no answer within the push's time limit"


@pytest.mark.fault
def test_a_start_up_slower_than_the_deadline_still_stores_the_event(crm, tmp_path):
    # The deadline (400 ms) is gone before Python reads the env block (600 ms): the hook
    # takes its short floor to store the event rather than lose it.
    conv, status, ms, held_s = slow_start(tmp_path, crm.url, 400)
    figure("script mode, 0.6 s slow start, deadline 400 ms",
           f"hook {status}, logged {ms} ms, process held the call {held_s * 1000:.0f} ms")
    assert conv.returncode == 0 and status in ("SENT", "QUEUED")
    assert [r["request_type"] for r in outbox_rows(tmp_path / "data")] == ["receivedTheCall"]
