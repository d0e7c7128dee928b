"""A push attempt is over at its limit whatever the CRM does, and one its caller stops
waiting for goes on, holding its event's lease, until its outcome is recorded."""

import socket
import threading
import time

import pytest
from support.faults import FaultyCrm, wait_until

from clinica_asterisk.delivery.sender import PushSender
from clinica_asterisk.delivery.worker import IN_FLIGHT, SENT, deliver_one
from clinica_asterisk.store.outbox import Outbox, lease_owner
from clinica_asterisk.store.database import Store

PAYLOAD = {"requestType": "receivedTheCall", "generalCallID": "42"}


class TricklingCrm:
    """Reads the request, then sends its answer one byte every 0.1 s, for ever; notes when
    the client went away."""

    def __init__(self):
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.closed_by_client = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}/push"

    def _serve(self):
        conn, _ = self.listener.accept()
        conn.recv(65536)
        answer = b"HTTP/1.1 200 OK\r\nX-Slow: " + b"x" * 100000
        try:
            for byte in answer:
                conn.sendall(bytes([byte]))
                time.sleep(0.1)
        except OSError:
            self.closed_by_client.set()
        finally:
            conn.close()

    def close(self):
        self.listener.close()


def test_a_crm_trickling_its_answer_is_cut_at_the_attempts_limit():
    crm = TricklingCrm()
    try:
        attempt = PushSender(crm.url, "form").post(PAYLOAD, 1.0)
        assert not attempt.ok and attempt.detail == "no answer within 1 s"
        assert crm.closed_by_client.wait(10), "the POST went on after its limit"
    finally:
        crm.close()


@pytest.fixture
def store(tmp_path):
    return Store(str(tmp_path / "clinica.sqlite3"))


def queued_event(store):
    outbox = Outbox(store)
    with store.transaction():
        outbox.enqueue(7, "receivedTheCall", PAYLOAD)
        leased, _ = outbox.lease_pending(7, lease_owner(), store.clock() + 60)
    return outbox, leased[0]


def test_an_attempt_its_caller_stopped_waiting_for_holds_the_lease_and_records_its_outcome(store):
    crm = FaultyCrm("slow", delay_s=1.0)
    outbox, event = queued_event(store)
    sender = PushSender(crm.url, "form")
    try:
        assert deliver_one(outbox, sender, event, limit_s=5, max_backoff_s=60, wait_s=0.2) == IN_FLIGHT
        # Nobody else may send it while it is in flight.
        assert not outbox.claim(event, "other-host:1", store.clock() + 60)
        wait_until(lambda: outbox.backlog()[0] == 0, "the late outcome recorded")
        (row,) = store.conn.execute("SELECT attempts, lease_owner, delivered_at FROM outbox").fetchall()
        assert (row["attempts"], row["lease_owner"]) == (1, None) and row["delivered_at"]
    finally:
        sender.close()
        crm.close()
    assert sum(crm.accepted().values()) == 1


def test_a_late_failure_does_not_undo_what_another_sender_did_since(store):
    outbox, event = queued_event(store)
    store.write("UPDATE outbox SET lease_owner = 'other-host:1' WHERE id = ?", (event.id,))
    assert not outbox.mark_failed(event.id, "late", 60, owners=(lease_owner(),))
    (row,) = store.conn.execute("SELECT attempts, lease_owner FROM outbox").fetchall()
    assert (row["attempts"], row["lease_owner"]) == (0, "other-host:1")


def test_a_lease_handed_over_moves_only_from_its_holder(store):
    outbox, event = queued_event(store)
    assert outbox.hand_over(event.id, lease_owner(), "host:99")
    assert not outbox.hand_over(event.id, lease_owner(), "host:100")
    assert store.conn.execute("SELECT lease_owner FROM outbox").fetchone()[0] == "host:99"


def test_a_sender_bounds_the_attempts_in_flight_and_says_so(store):
    crm = FaultyCrm("slow", delay_s=1.0)
    sender = PushSender(crm.url, "form", max_in_flight=1)
    try:
        first = sender.post(PAYLOAD, 5, wait_s=0.1)
        second = sender.post(PAYLOAD, 5, wait_s=0.1)
        assert first.in_flight and not second.tried and "under way" in second.detail
        assert sender.wait_idle(10) == 0
        assert sender.post(PAYLOAD, 5).ok
    finally:
        sender.close()
        crm.close()
    assert sum(crm.accepted().values()) == 2


def test_wait_idle_waits_for_the_late_outcome_too(store):
    crm = FaultyCrm("slow", delay_s=0.5)
    outbox, event = queued_event(store)
    sender = PushSender(crm.url, "form")
    try:
        assert deliver_one(outbox, sender, event, limit_s=5, max_backoff_s=60, wait_s=0.1) == IN_FLIGHT
        assert sender.wait_idle(10) == 0
        assert outbox.backlog()[0] == 0  # recorded before wait_idle returned
    finally:
        sender.close()
        crm.close()


def test_an_attempt_that_ends_in_time_is_recorded_by_its_caller(store):
    crm = FaultyCrm()
    outbox, event = queued_event(store)
    try:
        assert deliver_one(outbox, PushSender(crm.url), event, limit_s=5, max_backoff_s=60, wait_s=2) == SENT
        assert outbox.backlog()[0] == 0
    finally:
        crm.close()
