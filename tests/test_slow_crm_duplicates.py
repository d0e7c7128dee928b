"""A CRM slower than the hook's deadline gets each event once: the hook stops waiting,
but its POST goes on to the end of its own time limit, and nobody sends the event again
while that POST may still be in flight.  A crash (SIGKILL) in the middle costs at most one
more copy of each event whose POST it cut, never an event.

The CRM acts on a push as soon as it has read it (before it answers, as a real one does),
so every copy it reads from a CRM that is merely slow is a duplicate; a hung CRM acts on
nothing until it recovers."""

import os
import random
import subprocess
import threading
import time

import pytest
from support.fake_asterisk import FakeCall, run_script
from support.faults import (BIN, FaultyCrm, Serve, deliver_once, duplicates, environment, figure, pushes_of,
                           wait_until, waiting)

from clinica_asterisk.devtools.simulation import ARGS, play_session, recorded_calls, with_fresh_ids

pytestmark = pytest.mark.fault

CALLS = 3  # each a missed incoming call: receivedTheCall, hangupTheCall
ORDER = ["receivedTheCall", "hangupTheCall"]
SETTINGS = dict(hook_deadline_ms=2000, deliver_timeout_ms=6000, deliver_max_backoff_s=1)


def fresh_calls(seed):
    return [with_fresh_ids(recorded_calls()["in-miss"], random.Random(seed * 100 + n)) for n in range(CALLS)]


def play_over_fastagi(address, seed, crm=None, calls=CALLS, stages=None):
    """The calls at once, each hook after the previous one of its call, as Asterisk runs
    them.  With ``crm``: a call's next hook runs once the CRM has answered the event of the
    previous one (the call lasts longer than the CRM takes)."""
    return play_calls(lambda call, session: play_session(address, call, session.with_args(
        ARGS[session.label]).over_fastagi(*address), timeout_s=30)[:2], seed, crm, calls, stages)


def play_calls(run, seed, crm, calls, stages, stagger_s=0.0):
    """``run(call, session)`` -> (status, ms held) for each session; the statuses, and the
    holds in ms in ``HELD``.  The n-th call starts ``n * stagger_s`` after the first."""
    statuses = []

    def one(n, sessions):
        time.sleep(n * stagger_s)
        call = FakeCall()
        for session in sessions[:stages]:
            status, ms = run(call, session)
            statuses.append(status)
            HELD.append(ms)
            call_id = call.inherited.get("CLINICA_CALLID")
            if crm is not None and call_id:
                answered = len(statuses_of(crm, call_id)) + 1
                crm.wait_for(lambda c: len(statuses_of(c, call_id)) >= answered - 1 and not any(
                    p.key[0] == call_id and p.ended is None for p in c.posts), f"call {call_id}'s push answered")

    threads = [threading.Thread(target=one, args=(n, sessions)) for n, sessions in enumerate(fresh_calls(seed)[:calls])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return statuses


HELD = []


def statuses_of(crm, call_id):
    return [p for p in crm.posts if p.key[0] == call_id and p.answered]


def all_delivered(crm, data_dir, calls=CALLS):
    return lambda: len(crm.accepted()) == calls * len(ORDER) and waiting(data_dir) == 0 and crm.open_posts() == 0


@pytest.fixture
def crm():
    server = FaultyCrm()
    yield server
    server.close()


@pytest.mark.parametrize("delay_s", [2.5, 4.0])
def test_a_crm_slower_than_the_hook_deadline_gets_each_event_once(delay_s, crm, tmp_path):
    crm.set_mode("slow", delay_s)
    serve = Serve(environment(tmp_path, crm_push_url=crm.url, **SETTINGS), tmp_path / "serve.log")
    HELD.clear()
    try:
        statuses = play_over_fastagi(serve.address, seed=int(delay_s * 10), crm=crm)
        assert set(statuses) <= {"QUEUED", "SKIPPED"}, statuses  # no hook waited for the CRM
        wait_until(all_delivered(crm, tmp_path / "data"), "every event delivered")
    finally:
        serve.stop()
    figure(f"serve, CRM answering after {delay_s} s (hook deadline 2 s)",
           f"{sum(crm.accepted().values())} copies of {len(crm.accepted())} events, "
           f"{duplicates(crm.accepted())} duplicates, {crm.concurrent_copies()} concurrent; "
           f"longest hook {max(HELD)} ms")
    assert duplicates(crm.accepted()) == 0, crm.accepted()
    assert crm.concurrent_copies() == 0
    assert list(pushes_of(crm).values()) == [ORDER] * CALLS


def test_a_crm_that_never_answers_and_a_sigkill_of_serve_lose_nothing_and_send_nothing_twice(crm, tmp_path):
    crm.set_mode("hang")
    env = environment(tmp_path, crm_push_url=crm.url, **SETTINGS)
    serve = Serve(env, tmp_path / "serve.log")
    try:
        assert set(play_over_fastagi(serve.address, seed=7)) <= {"QUEUED", "SKIPPED"}
        crm.wait_for(lambda c: c.open_posts() >= 1, "a POST in flight")
    finally:
        serve.kill()
    crm.set_mode("ok")
    serve = Serve(env, tmp_path / "serve-2.log")
    try:
        wait_until(all_delivered(crm, tmp_path / "data"), "every event delivered after the restart")
    finally:
        serve.stop()
    figure("serve, CRM never answering, one SIGKILL, then back",
           f"{len(crm.posts)} POSTs for {len(crm.accepted())} events, {duplicates(crm.accepted())} duplicates, "
           f"{crm.concurrent_copies()} concurrent")
    assert duplicates(crm.accepted()) == 0
    assert crm.concurrent_copies() == 0  # no event was ever sent while a copy was in flight
    assert list(pushes_of(crm).values()) == [ORDER] * CALLS


def test_a_slow_crm_and_a_sigkill_of_serve_cost_at_most_one_copy_of_what_was_in_flight(crm, tmp_path):
    crm.set_mode("slow", 2.5)
    env = environment(tmp_path, crm_push_url=crm.url, **SETTINGS)
    serve = Serve(env, tmp_path / "serve.log")
    try:
        assert set(play_over_fastagi(serve.address, seed=8, calls=2)) <= {"QUEUED", "SKIPPED"}
        crm.wait_for(lambda c: c.open_posts() >= 1, "a POST in flight")
    finally:
        killed_at = time.monotonic()
        serve.kill()
    in_flight = crm.open_at(killed_at)
    crm.set_mode("ok")  # quick from now on: what it took before the crash is what counts
    serve = Serve(env, tmp_path / "serve-2.log")
    try:
        wait_until(all_delivered(crm, tmp_path / "data", calls=2), "every event delivered after the restart")
    finally:
        serve.stop()
    accepted = crm.accepted()
    figure("serve, CRM answering after 2.5 s, one SIGKILL",
           f"{in_flight} POSTs in flight at the kill, {duplicates(accepted)} duplicates of "
           f"{len(accepted)} events, {crm.concurrent_copies()} concurrent")
    assert len(accepted) == 2 * len(ORDER)  # none lost
    assert max(accepted.values()) <= 2 and duplicates(accepted) <= in_flight, (accepted, in_flight)
    assert crm.concurrent_copies() == 0  # the copy after the crash came once the first was over


def test_deliver_killed_while_a_slow_crm_holds_its_post_costs_at_most_one_copy(crm, tmp_path, closed_port_url):
    env = environment(tmp_path, crm_push_url=closed_port_url, **SETTINGS)
    serve = Serve(env, tmp_path / "serve.log")  # the CRM is down: everything queues
    try:
        play_over_fastagi(serve.address, seed=9)
    finally:
        serve.kill()
    crm.set_mode("slow", 2.5)
    env = environment(tmp_path, crm_push_url=crm.url, **SETTINGS)
    proc = subprocess.Popen([os.path.join(BIN, "clinica-asterisk"), "deliver"], env=env,
                                          stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL)
    try:
        crm.wait_for(lambda c: c.open_posts() >= 1, "deliver's first POST")
    finally:
        proc.kill()
        proc.wait(10)
    crm.set_mode("ok")
    done = deliver_once(env)
    assert done.returncode == 0, done.stdout + done.stderr
    accepted = crm.accepted()
    figure("deliver, CRM answering after 2.5 s, one SIGKILL", f"{duplicates(accepted)} duplicates of "
           f"{len(accepted)} events")
    assert len(accepted) == CALLS * len(ORDER) and duplicates(accepted) <= 1
    assert list(pushes_of(crm).values()) == [ORDER] * CALLS or duplicates(accepted) == 1


def test_script_mode_hooks_and_their_worker_send_each_event_once_to_a_slow_crm(crm, tmp_path):
    crm.set_mode("slow", 2.5)
    env = environment(tmp_path, crm_push_url=crm.url, log_file="", **SETTINGS)
    worker = subprocess.Popen([os.path.join(BIN, "clinica-asterisk"), "deliver", "--forever"],
                                            env=dict(env, CLINICA_LOG_FILE="-"),
                                            stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL)
    try:
        def hook(call, session):
            started = time.monotonic()
            run_script([os.path.join(BIN, "clinica-agi")], call, session.with_args(ARGS[session.label]), env)
            return call.status_of(session.label), int((time.monotonic() - started) * 1000)

        HELD.clear()
        # Staggered: three Python start-ups at once on a loaded two-core host could eat
        # a 2 s deadline by themselves (the hook then gives up, FAILED, as it must).
        statuses = play_calls(hook, 10, crm, CALLS, None, stagger_s=0.7)
        assert set(statuses) <= {"QUEUED", "SKIPPED"}, statuses
        wait_until(all_delivered(crm, tmp_path / "data"), "every event delivered")
    finally:
        worker.terminate()
        worker.wait(30)
    figure("script mode, CRM answering after 2.5 s (hook deadline 2 s)",
           f"{sum(crm.accepted().values())} copies of {len(crm.accepted())} events, "
           f"{duplicates(crm.accepted())} duplicates; longest hook process {max(HELD)} ms from spawn to exit")
    assert duplicates(crm.accepted()) == 0, crm.accepted()
    assert crm.concurrent_copies() == 0
    assert list(pushes_of(crm).values()) == [ORDER] * CALLS


def test_the_answer_hook_lets_the_two_talk_within_its_own_short_deadline(crm, tmp_path):
    # Dial's U() routine runs before the two parties hear each other: whatever the answer
    # hook waits for is silence on the line.  With a CRM taking 1 s, the ring and hang-up
    # hooks wait for it (deadline 2 s); the answer hook lets the call through within its
    # own 250 ms, and its push goes on after, once.
    crm.set_mode("slow", 1.0)
    serve = Serve(environment(tmp_path, crm_push_url=crm.url, **SETTINGS), tmp_path / "serve.log")
    held = {}
    try:
        call = FakeCall()
        for session in with_fresh_ids(recorded_calls()["in-801"], random.Random(7)):
            status, ms = play_session(serve.address, call, session.with_args(ARGS[session.label]).over_fastagi(
                *serve.address), timeout_s=30)[:2]
            held[session.label] = (status, ms)
            crm.wait_for(lambda c: c.open_posts() == 0, "the hook's push answered")
        wait_until(lambda: len(crm.accepted()) == 3 and waiting(tmp_path / "data") == 0, "every event delivered")
    finally:
        serve.stop()
    figure("serve, CRM answering after 1 s: what each hook held its call (ms)",
           ", ".join(f"{label} {status} {ms}" for label, (status, ms) in held.items()))
    assert held["ring-in"][0] == "SENT" and held["answer"][0] == "QUEUED"
    assert held["answer"][1] <= 250 < held["ring-in"][1]
    assert duplicates(crm.accepted()) == 0
    assert list(pushes_of(crm).values()) == [["receivedTheCall", "answeredTheCall", "hangupTheCall"]]
