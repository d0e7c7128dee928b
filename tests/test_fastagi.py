"""The FastAGI server over real TCP: a fake Asterisk replays the recorded sessions against
it, and it must push exactly what script mode pushes, refuse what it cannot take at once,
drop what is not Asterisk, and never hold a call longer than its deadlines."""

import ipaddress
import logging
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from support import player
from support.settings import make_settings
from support.fake_asterisk import FakeCall, asterisk22_sessions, freepbx_calls
from support.fastagi import GatedCrm, exchange, fastagi, running_server, status_of
from support.player import play_freepbx_call

from clinica_asterisk.agi.request import MAX_LINE_BYTES
from clinica_asterisk.devtools.crm_sink import CrmSink
from clinica_asterisk.delivery.sender import PushSender
from clinica_asterisk.delivery.worker import deliver_pass
from clinica_asterisk.hooks.fastagi import MAX_POOL, WorkerPool, client_allowed
from clinica_asterisk.hooks.stages import HookServices
from clinica_asterisk.store.outbox import Outbox
from clinica_asterisk.devtools.simulation import ARGS, recorded_calls, with_fresh_ids
from clinica_asterisk.store.database import Store

FASTAGI_RECORDED = asterisk22_sessions("fastagi-sessions.jsonl")


@pytest.fixture
def second_crm():
    sink = CrmSink().start()
    yield sink
    sink.stop()


def env_block(session, address, script="clinica-agi") -> bytes:
    return ("\n".join(session.over_fastagi(*address, script).env) + "\n\n").encode()


def without_ids(pushes):
    return [dict(p, generalCallID="ID") for p in pushes]


def by_call(pushes):
    calls = {}
    for p in pushes:
        calls.setdefault(p["generalCallID"], []).append(p["requestType"])
    return calls


def fresh_call(name="in-801", seed=None):
    return with_fresh_ids(recorded_calls()[name], random.Random(seed))


# --- the recorded FastAGI sessions ----------------------------------------------------

def test_recorded_fastagi_sessions_are_answered_as_recorded(crm, tmp_path, caplog):
    """ring?in and sleep are no stage of ours (NOTFOUND); every hangup pushes its call."""
    caplog.set_level(logging.INFO)
    settings = make_settings(tmp_path / "data", crm_push_url=crm.url)
    calls = {}
    statuses = []
    with running_server(settings) as server:
        for session in FASTAGI_RECORDED:
            call = calls.setdefault(session.variables["${CHANNEL(linkedid)}"], FakeCall())
            conv = fastagi(server.address, call, session, script=session.env_value("agi_network_script"))
            assert conv.closed_by_script
            statuses.append((session.label, status_of(conv)))
    assert statuses == [("ring?in", "NOTFOUND"), ("hangup", "SENT"), ("sleep", "NOTFOUND"),
                        ("hangup", "SENT"), ("hangup", "SENT")]
    assert sorted(by_call(crm.pushes()).values()) == [["receivedTheCall", "hangupTheCall"]] * 3
    assert "stage=ring outcome=NOTFOUND" in caplog.text


@pytest.mark.parametrize("after, lines", [(2, 1), (0, 1), (0, 2), (1, 2)])
def test_caller_hanging_up_during_the_hook_does_not_stop_it(after, lines, crm, tmp_path):
    """Asterisk's unsolicited HANGUP (as recorded in the 'sleep' session, once or twice, at
    any point) is skipped; the hook still stores and pushes the call."""
    sleep = next(s for s in FASTAGI_RECORDED if s.label == "sleep")
    sleep.unsolicited_hangup_after, sleep.hangup_lines = after, lines
    settings = make_settings(tmp_path / "data", crm_push_url=crm.url)
    with running_server(settings) as server:
        conv = fastagi(server.address, FakeCall(), sleep, args=["hangup", "in"])
    assert len(conv.commands) > after, "the HANGUP lines were sent"
    assert status_of(conv) == "SENT"
    assert [p["requestType"] for p in crm.pushes()] == ["receivedTheCall", "hangupTheCall"]


# --- the same pushes as script mode -----------------------------------------------------

@pytest.mark.parametrize("scenario", sorted(freepbx_calls()))
def test_freepbx_call_over_fastagi_pushes_what_the_handlers_push_in_process(scenario, crm, second_crm, tmp_path):
    sessions = freepbx_calls()[scenario]
    in_process = HookServices.open(make_settings(tmp_path / "direct", crm_push_url=second_crm.url))
    _, direct_call = play_freepbx_call(in_process, sessions)

    over_tcp = FakeCall()
    with running_server(make_settings(tmp_path / "fastagi", crm_push_url=crm.url)) as server:
        player.play(sessions, player.OverFastAgi(server.address), over_tcp)

    assert without_ids(crm.pushes()) == without_ids(second_crm.pushes())
    assert len(by_call(crm.pushes())) == 1

    def effects(call):  # what the hooks left on the channels, call ids aside
        return [(label, name, "ID" if name.endswith("CLINICA_CALLID") else value)
                for label, name, value in call.set_on_channel]

    assert effects(over_tcp) == effects(direct_call)


@pytest.mark.parametrize("name", ["in-801", "in-group", "in-miss", "out"])
def test_recorded_call_over_fastagi_pushes_exactly_what_the_script_pushes(name, crm, second_crm, tmp_path):
    sessions = recorded_calls()[name]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLINICA_")}
    (tmp_path / "empty.env").write_text("")
    env.update(CLINICA_CRM_PUSH_URL=second_crm.url, CLINICA_DATA_DIR=str(tmp_path / "script"),
               CLINICA_ENV_FILE=str(tmp_path / "empty.env"), CLINICA_ANSWER_DEADLINE_MS="2000")
    script_call = FakeCall()
    player.play(sessions, player.Script(env), script_call)

    fastagi_call = FakeCall()
    with running_server(make_settings(tmp_path / "fastagi", crm_push_url=crm.url)) as server:
        statuses = [p.status for p in player.play(sessions, player.OverFastAgi(server.address), fastagi_call)]

    assert statuses == ["SENT"] * len(sessions)
    assert without_ids(crm.pushes()) == without_ids(second_crm.pushes())
    assert [s for s in script_call.set_on_channel if s[1] == "CLINICA_STATUS"] == \
        [s for s in fastagi_call.set_on_channel if s[1] == "CLINICA_STATUS"]


# --- load ---------------------------------------------------------------------------------

CONCURRENT_CALLS = 100
IN_FLIGHT = 100


def test_hundreds_of_parallel_sessions_push_every_event_exactly_once(crm, tmp_path):
    """100 calls at once, each: ring-in, then two legs answering at the same moment, then
    hang-up: 400 sessions, 100 in flight (this process holds both ends of each, and the
    CRM's).  Whatever the hooks could not send in time the worker sends later; the CRM
    gets each event once, in order."""
    settings = make_settings(tmp_path / "data", crm_push_url=crm.url, fastagi_pool=MAX_POOL,
                             fastagi_backlog=1024, hook_deadline_ms=10000, answer_deadline_ms=10000)
    rng = random.Random(7)
    calls = [with_fresh_ids(recorded_calls()["in-801"], rng) for _ in range(CONCURRENT_CALLS)]
    start = threading.Barrier(CONCURRENT_CALLS)
    in_flight = threading.BoundedSemaphore(IN_FLIGHT)

    with running_server(settings) as server:
        address = server.address

        def session(call, recorded, args):
            with in_flight:
                return status_of(fastagi(address, call, recorded, args=args))

        def play(sessions):
            ring, answer, hangup = sessions
            call = FakeCall()
            start.wait()
            done = [session(call, ring, ARGS["ring-in"])]
            with ThreadPoolExecutor(2) as legs:
                done += legs.map(lambda _: session(call, answer, ["answer"]), range(2))
            done.append(session(call, hangup, ARGS["hangup-in"]))
            return done

        with ThreadPoolExecutor(CONCURRENT_CALLS) as pool:
            statuses = list(pool.map(play, calls))

    for ring, answer1, answer2, hangup in statuses:
        assert ring in ("SENT", "QUEUED") and hangup in ("SENT", "QUEUED")
        # One leg reports the answer; the other finds it reported.
        assert sorted([answer1, answer2]) in (["QUEUED", "SKIPPED"], ["SENT", "SKIPPED"]), statuses
    outbox = Outbox(Store(settings.db_path))
    deliver_pass(outbox, PushSender(crm.url), 10.0, 300.0, due_only=False)
    assert outbox.backlog()[0] == 0

    pushes = by_call(crm.pushes())
    assert len(pushes) == CONCURRENT_CALLS
    assert all(events == ["receivedTheCall", "answeredTheCall", "hangupTheCall"] for events in pushes.values())


def test_full_pool_refuses_at_once_and_serves_again_when_a_worker_frees(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    crm = GatedCrm()
    settings = make_settings(tmp_path / "data", crm_push_url=crm.url, fastagi_pool=2, hook_deadline_ms=30000)
    try:
        with running_server(settings) as server:
            rings = [fresh_call(seed=n)[0] for n in range(4)]
            with ThreadPoolExecutor(2) as held:
                busy = [held.submit(fastagi, server.address, FakeCall(), rings[n], ARGS["ring-in"]) for n in range(2)]
                crm.wait_for(2)
                assert server.pool.busy == 2

                assert exchange(server.address, env_block(rings[2].with_args(ARGS["ring-in"]), server.address)) == b""
                assert "outcome=REFUSED" in caplog.text and "all 2 workers busy" in caplog.text

                crm.open()
                assert [status_of(f.result()) for f in busy] == ["SENT", "SENT"]
            # A worker is free once its session is closed, a moment after Asterisk's side
            # saw the status: wait for that (bounded) rather than race it.
            until = time.monotonic() + 10
            while server.pool.busy and time.monotonic() < until:
                time.sleep(0.01)
            assert status_of(fastagi(server.address, FakeCall(), rings[3], ARGS["ring-in"])) == "SENT"
        assert len(crm.received) == 3
    finally:
        crm.close()


# --- what is not Asterisk ---------------------------------------------------------------

def test_client_stalling_in_its_env_block_is_dropped_and_frees_its_worker(crm, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    settings = make_settings(tmp_path / "data", crm_push_url=crm.url, fastagi_pool=1,
                             fastagi_session_timeout_ms=100)
    ring = fresh_call()[0]
    half = env_block(ring.with_args(ARGS["ring-in"]), ("127.0.0.1", 1))[:200]
    with running_server(settings) as server:
        assert exchange(server.address, half) == b""
        assert "outcome=DROPPED" in caplog.text and "no complete env block within 100 ms" in caplog.text
        assert status_of(fastagi(server.address, FakeCall(), ring, ARGS["ring-in"])) == "SENT"
    assert len(crm.pushes()) == 1


GARBAGE = {
    "http": b"GET / HTTP/1.1\r\nHost: pbx\r\n\r\n",
    "binary": bytes(range(1, 256)) + b"\n\n",
    "endless line": b"agi_request: " + b"x" * (MAX_LINE_BYTES + 4096),
    "no request": b"agi_network: yes\nagi_channel: PJSIP/801-00000001\n\n",
    "too many lines": b"agi_request: agi://127.0.0.1/clinica-agi\n" + b"agi_arg_1: x\n" * 600 + b"\n",
}


@pytest.mark.parametrize("garbage", sorted(GARBAGE))
def test_garbage_instead_of_an_env_block_is_dropped_without_a_word(garbage, crm, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    with running_server(make_settings(tmp_path / "data", crm_push_url=crm.url)) as server:
        assert exchange(server.address, GARBAGE[garbage]) == b""
    assert "outcome=DROPPED" in caplog.text and "not an AGI env block" in caplog.text
    assert crm.pushes() == []


def test_connection_closed_before_the_env_block_is_logged_quietly(crm, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    with running_server(make_settings(tmp_path / "data", crm_push_url=crm.url)) as server:
        assert exchange(server.address, b"", half_close=True) == b""
    assert "closed before sending an env block" in caplog.text


@pytest.mark.parametrize("script, args", [("ring-sideways", ["0443334000"]), ("clinica-agi", ["ring-sideways"]),
                                          ("clinica-agi", [])])
def test_unknown_script_or_stage_is_answered_with_notfound_and_a_log_line(script, args, crm, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    with running_server(make_settings(tmp_path / "data", crm_push_url=crm.url)) as server:
        conv = fastagi(server.address, FakeCall(), fresh_call()[0], args=args, script=script)
    assert status_of(conv) == "NOTFOUND"
    assert any(c.startswith("VERBOSE") and "unknown stage" in c for c in conv.commands)
    stage = script if script != "clinica-agi" else (args[0] if args else "?")
    assert f"stage={stage} outcome=NOTFOUND" in caplog.text
    assert crm.pushes() == []


# --- who may connect ----------------------------------------------------------------------

def test_client_outside_the_allow_list_is_refused_and_logged(crm, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    settings = make_settings(tmp_path / "data", crm_push_url=crm.url, fastagi_allow="10.0.0.0/8, 192.168.1.5")
    ring = fresh_call()[0].with_args(ARGS["ring-in"])
    with running_server(settings) as server:
        assert exchange(server.address, env_block(ring, server.address)) == b""
    assert "client=127.0.0.1 outcome=REFUSED" in caplog.text and "CLINICA_FASTAGI_ALLOW" in caplog.text
    assert crm.pushes() == []


def test_client_inside_the_allow_list_is_served(crm, tmp_path):
    settings = make_settings(tmp_path / "data", crm_push_url=crm.url, fastagi_allow="10.0.0.0/8,127.0.0.1")
    with running_server(settings) as server:
        assert status_of(fastagi(server.address, FakeCall(), fresh_call()[0], ARGS["ring-in"])) == "SENT"


@pytest.mark.parametrize("client, allow, allowed", [
    ("127.0.0.1", "", True),
    ("10.0.0.5", "10.0.0.5", True),
    ("10.0.0.6", "10.0.0.5", False),
    ("10.1.2.3", "10.0.0.0/8", True),
    ("::ffff:10.1.2.3", "10.0.0.0/8", True),  # a dual-stack listener
    ("fd00::5", "10.0.0.0/8,fd00::/64", True),
    ("fd01::5", "fd00::/64", False),
    ("not-an-ip", "10.0.0.0/8", False),
])
def test_allow_list_table(client, allow, allowed):
    networks = tuple(ipaddress.ip_network(a, strict=False) for a in allow.split(",") if a)
    assert client_allowed(client, networks) is allowed


def test_reload_applies_a_new_allow_list_to_the_next_session(crm, tmp_path):
    ring = fresh_call()[0]
    with running_server(make_settings(tmp_path / "data", crm_push_url=crm.url)) as server:
        assert status_of(fastagi(server.address, FakeCall(), ring, ARGS["ring-in"])) == "SENT"
        server.reload(make_settings(tmp_path / "data", crm_push_url=crm.url, fastagi_allow="10.0.0.0/8"))
        assert exchange(server.address, env_block(ring.with_args(ARGS["ring-in"]), server.address)) == b""


def test_reload_sends_to_a_new_crm_url(crm, second_crm, tmp_path):
    with running_server(make_settings(tmp_path / "data", crm_push_url=crm.url)) as server:
        fastagi(server.address, FakeCall(), fresh_call(seed=1)[0], ARGS["ring-in"])
        server.reload(make_settings(tmp_path / "data", crm_push_url=second_crm.url))
        fastagi(server.address, FakeCall(), fresh_call(seed=2)[0], ARGS["ring-in"])
    assert len(crm.pushes()) == 1 and len(second_crm.pushes()) == 1


# --- the pool and health --------------------------------------------------------------------

class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_pool_takes_at_most_its_size_and_never_queues():
    release, started = threading.Event(), threading.Semaphore(0)

    def work(job):
        started.release()
        release.wait(30)

    pool = WorkerPool(2, work)
    assert pool.submit(1) and pool.submit(2)
    assert started.acquire(timeout=30) and started.acquire(timeout=30)
    assert not pool.submit(3)
    release.set()
    assert pool.wait_idle(30) == 0
    assert pool.submit(4)  # a worker is free again
    assert pool.wait_idle(30) == 0
    pool.close()


def test_pool_reports_how_long_its_oldest_job_has_run():
    clock, release, started = FakeClock(), threading.Event(), threading.Event()
    pool = WorkerPool(4, lambda job: (started.set(), release.wait(30)), clock=clock)
    assert pool.longest_busy_s() == 0.0
    pool.submit("stuck")
    assert started.wait(30)
    clock.now += 42
    assert pool.longest_busy_s() == 42
    release.set()
    assert pool.wait_idle(30) == 0
    assert pool.longest_busy_s() == 0.0
    pool.close()


def test_server_is_unhealthy_while_a_worker_is_stuck_past_any_deadline(tmp_path):
    clock = FakeClock()
    settings = make_settings(tmp_path / "data", fastagi_engine="threads", fastagi_pool=64)
    from clinica_asterisk.hooks.fastagi import STUCK_MARGIN_S, FastAgiServer, max_session_s

    server = FastAgiServer(settings, bind=("127.0.0.1", 0), clock=clock)
    release, started = threading.Event(), threading.Event()
    server.pool._work = lambda job: (started.set(), release.wait(30))
    server.bind()
    try:
        assert server.healthy()
        server.pool.submit("a session that never ends")
        assert started.wait(30)
        clock.now += max_session_s(settings)
        server._last_turn = clock.now  # the accept loop itself keeps turning
        assert server.healthy()
        clock.now += STUCK_MARGIN_S + 1
        server._last_turn = clock.now
        assert not server.healthy()
        release.set()
        assert server.pool.wait_idle(30) == 0
        assert server.healthy()
        server.request_stop()
        assert not server.healthy()
    finally:
        release.set()
        server.close()
