"""The event-loop FastAGI server (CLINICA_FASTAGI_ENGINE=loop, the default): what is its
own — group commit, the push client on the loop, health — beside the behaviour every test
of test_fastagi.py checks on it through ``running_server``."""

import logging
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from support.fake_asterisk import FakeCall
from support.fastagi import GatedCrm, fastagi, running_server, status_of
from support.settings import make_settings

from clinica_asterisk.devtools.crm_sink import CrmSink
from clinica_asterisk.devtools.simulation import ARGS, recorded_calls, with_fresh_ids
from clinica_asterisk.hooks.fastagi import STUCK_MARGIN_S, fastagi_server, max_session_s
from clinica_asterisk.hooks.fastagi_loop import LoopFastAgiServer
from clinica_asterisk.store.database import Store
from clinica_asterisk.store.outbox import Outbox


def ring(seed):
    import random

    return with_fresh_ids(recorded_calls()["in-801"], random.Random(seed))[0]


def test_the_event_loop_is_the_default_engine(tmp_path):
    server = fastagi_server(make_settings(tmp_path / "data"), bind=("127.0.0.1", 0))
    try:
        assert isinstance(server, LoopFastAgiServer) and server.engine == "loop"
    finally:
        server.close()


def test_a_failed_transaction_in_a_group_rolls_back_alone(tmp_path):
    store = Store(str(tmp_path / "calls.sqlite3"))
    with store.group():
        with store.transaction():
            kept = store.insert_call({"direction": "in", "started_at": 1.0, "linkedid": "a"})
        with pytest.raises(RuntimeError):
            with store.transaction():
                store.insert_call({"direction": "in", "started_at": 2.0, "linkedid": "b"})
                raise RuntimeError("this hook's write fails")
        assert store.in_transaction  # one commit for the group, at its end
    other = Store(str(tmp_path / "calls.sqlite3"))
    assert other.call(kept)["linkedid"] == "a"
    assert other.call_by_linkedid("", "b") is None


def test_sessions_that_write_at_once_share_commits_and_each_is_stored(crm, tmp_path):
    settings = make_settings(tmp_path / "data", crm_push_url=crm.url)
    with running_server(settings) as server:
        with ThreadPoolExecutor(32) as asterisk:
            statuses = list(asterisk.map(
                lambda n: status_of(fastagi(server.address, FakeCall(), ring(n), ARGS["ring-in"])), range(64)))
    assert statuses == ["SENT"] * 64
    assert len([p for p in crm.pushes() if p["requestType"] == "receivedTheCall"]) == 64
    assert Outbox(Store(settings.db_path)).backlog()[0] == 0


def test_a_crm_slower_than_the_deadline_gets_each_push_once_after_its_hook(tmp_path):
    crm = GatedCrm()
    try:
        settings = make_settings(tmp_path / "data", crm_push_url=crm.url, hook_deadline_ms=300)
        with running_server(settings) as server:
            assert status_of(fastagi(server.address, FakeCall(), ring(1), ARGS["ring-in"])) == "QUEUED"
            crm.open()
            crm.wait_for(1)
        assert len(crm.received) == 1
        outbox = Outbox(Store(settings.db_path))
        assert outbox.backlog()[0] == 0  # the late outcome was recorded: nobody sends it again
    finally:
        crm.close()


def test_a_crm_that_closes_its_kept_alive_connections_still_gets_every_push(tmp_path, monkeypatch):
    crm = CrmSink().start()
    # One request per connection (the handler class is shared: undone after the test).
    monkeypatch.setattr(crm.RequestHandlerClass, "protocol_version", "HTTP/1.0")
    try:
        settings = make_settings(tmp_path / "data", crm_push_url=crm.url)
        with running_server(settings) as server:
            statuses = [status_of(fastagi(server.address, FakeCall(), ring(n), ARGS["ring-in"])) for n in range(5)]
        assert statuses == ["SENT"] * 5 and len(crm.pushes()) == 5
    finally:
        crm.stop()


def test_a_crm_that_is_down_queues_the_push(tmp_path, caplog):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    settings = make_settings(tmp_path / "data", crm_push_url=f"http://127.0.0.1:{port}/api/Binotel/Push")
    with caplog.at_level(logging.INFO), running_server(settings) as server:
        assert status_of(fastagi(server.address, FakeCall(), ring(1), ARGS["ring-in"])) == "QUEUED"
    assert "ConnectionRefusedError" in caplog.text
    assert Outbox(Store(settings.db_path)).backlog()[0] == 1


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_the_loop_is_unhealthy_while_a_session_outlives_any_deadline(tmp_path):
    clock = FakeClock()
    settings = make_settings(tmp_path / "data")
    server = LoopFastAgiServer(settings, bind=("127.0.0.1", 0), clock=clock)
    server.bind()
    try:
        assert server.healthy()
        server.pool.started[99] = clock.now  # a session the loop has not finished
        clock.now += max_session_s(settings)
        server._last_turn = clock.now
        assert server.healthy()
        clock.now += STUCK_MARGIN_S + 1
        server._last_turn = clock.now
        assert not server.healthy()
        del server.pool.started[99]
        assert server.healthy()
        server._last_turn = clock.now - 60  # the loop itself stopped turning
        assert not server.healthy()
    finally:
        server.close()


def test_stopping_lets_the_sessions_in_flight_and_their_pushes_finish(tmp_path):
    crm = GatedCrm()
    try:
        settings = make_settings(tmp_path / "data", crm_push_url=crm.url, hook_deadline_ms=30000)
        server = fastagi_server(settings, bind=("127.0.0.1", 0)).start()
        address = server.address
        with ThreadPoolExecutor(3) as asterisk:
            in_flight = [asterisk.submit(fastagi, address, FakeCall(), ring(n), ARGS["ring-in"])
                         for n in range(3)]
            crm.wait_for(3)
            server.request_stop()
            # The listener closes on the loop's next turn: refused, or reset when the probe
            # was still in the backlog as it closed.
            with pytest.raises((ConnectionRefusedError, ConnectionResetError)):
                for _ in range(100):
                    socket.create_connection(address, timeout=5).close()
                    threading.Event().wait(0.05)
            crm.open()
            assert [status_of(f.result()) for f in in_flight] == ["SENT"] * 3
        assert server.stop() == 0
    finally:
        crm.close()
