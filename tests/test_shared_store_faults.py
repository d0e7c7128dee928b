"""Faults of a shared store on a real mariadbd of the test's own: two delivery workers
(real ``clinica-asterisk deliver --forever`` processes, one of them on "another host")
sending 2 000 calls' events while one is SIGKILLed mid-delivery and the database restarts;
a hook whose database does not answer.  Skipped without mariadbd, failed under CI."""

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from support import player
from support.api import CALLS
from support.faults import BIN, FaultyCrm, environment, figure, wait_until
from support.mariadb import TcpRelay
from support.net import free_port

from clinica_asterisk.store.database import Store
from clinica_asterisk.store.outbox import Outbox

pytestmark = pytest.mark.fault

EVENTS = ("receivedTheCall", "answeredTheCall", "hangupTheCall")
CALLS_N = 2000


def _load(url: str, calls: int) -> None:
    """``calls`` ended calls and their three events each, as the hooks leave them when the
    CRM did not take them."""
    store = Store(url, busy_timeout_s=10.0)
    outbox = Outbox(store)
    now = time.time()
    for start in range(0, calls, 200):
        with store.transaction():
            for n in range(start, min(calls, start + 200)):
                call_id = store.insert_call({"pbx": "pbx1", "linkedid": f"load-{n}", "direction": "in",
                                             "started_at": now, "ended_at": now + 1, "dst_numbers": ["801"]})
                for key in EVENTS:
                    outbox.enqueue(call_id, key, {"requestType": key, "generalCallID": str(call_id)})
    store.close()


def _other_host(command):
    """``command`` as a process of another host (a UTS namespace of its own with another
    host name: its leases name that host), when this user may make one; else as it is."""
    unshare = shutil.which("unshare")
    if unshare and os.geteuid() == 0 and subprocess.run([unshare, "--uts", "true"]).returncode == 0:
        return [unshare, "--uts", "sh", "-c", 'hostname clinica-other-node && exec "$@"', "sh", *command], True
    return command, False


class Worker:
    def __init__(self, env, log: Path, other_host: bool = False):
        command = [os.path.join(BIN, "clinica-asterisk"), "deliver", "--forever"]
        self.other_host = False
        if other_host:
            command, self.other_host = _other_host(command)
        self._log = open(log, "ab")
        self.log = log
        self.proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=self._log)

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


def _accepted_in_order(crm):
    """Per call, the events the CRM acted on, in the order it acted."""
    calls = {}
    with crm.lock:
        for post in crm.posts:
            if post.accepted:
                calls.setdefault(post.key[0], []).append(post.key[1])
    return calls


def test_two_workers_deliver_every_event_once_in_order_through_a_kill_and_a_database_restart(
        tmp_path, private_mariadb):
    url = private_mariadb.create_store("clinica")
    _load(url, CALLS_N)
    crm = FaultyCrm("ok")
    workers = []
    try:
        common = dict(crm_push_url=crm.url, store_url=url, deliver_timeout_ms=1000, deliver_max_backoff_s=1,
                      reconcile_s=0)
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        env_a = environment(tmp_path / "a", **common)
        env_b = environment(tmp_path / "b", **common)
        started = time.monotonic()
        workers = [Worker(env_a, tmp_path / "a.log", other_host=True), Worker(env_b, tmp_path / "b.log")]
        total = CALLS_N * len(EVENTS)

        def taken():
            return len(crm.accepted())

        wait_until(lambda: taken() >= total // 4, "a quarter of the events delivered", timeout_s=120)
        workers[0].kill()  # node A dies mid-delivery: its lease names a host B cannot look into
        killed_at = taken()
        wait_until(lambda: taken() >= total // 2, "half of the events delivered", timeout_s=120)
        restart_began = time.monotonic()
        private_mariadb.restart()
        restarted_in = time.monotonic() - restart_began
        wait_until(lambda: taken() >= total, "every event delivered", timeout_s=180)
        took = time.monotonic() - started
        accepted = crm.accepted()
        per_call = _accepted_in_order(crm)
    finally:
        for worker in workers:
            worker.stop()
        crm.close()
    logs = "".join(w.log.read_text(errors="replace")[-3000:] for w in workers)
    assert len(accepted) == total, logs  # 0 events lost
    duplicates = sum(n - 1 for n in accepted.values())
    assert duplicates <= 2, (duplicates, logs)  # at most one per kill (the node, the database)
    out_of_order = [call for call, events in per_call.items()
                    if list(dict.fromkeys(events)) != list(EVENTS)]
    assert out_of_order == []
    store = Store(url, busy_timeout_s=10.0)
    assert Outbox(store).backlog()[0] == 0
    store.close()
    figure("shared store, two deliver workers (one SIGKILLed, its lease on another host), database restarted once",
           f"{total} events of {CALLS_N} calls in {took:.1f} s, {duplicates} duplicates, 0 lost, 0 out of order; "
           f"killed after {killed_at} events; the database was down {restarted_in:.1f} s; "
           f"other host: {workers[0].other_host}")


class SilentServer:
    """A server that accepts connections and never says a word (a database host that is
    hung, or a firewall that swallows the handshake)."""

    def __init__(self, port: int):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(64)
        self.held = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self):
        while True:
            try:
                self.held.append(self.sock.accept()[0])
            except OSError:
                return

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self._thread.join(5)
        for conn in self.held:
            conn.close()


def test_a_hook_whose_database_does_not_answer_ends_in_time_and_its_events_reach_the_store_later(
        tmp_path, private_mariadb):
    url = private_mariadb.create_store("clinica")
    port = free_port()
    silent_url = url.replace(f":{private_mariadb.port}/", f":{port}/")
    crm = FaultyCrm("status", status=503)  # the CRM is down too: the events wait in the spool
    silent = SilentServer(port)
    deadline_ms = 1000
    try:
        env = environment(tmp_path, crm_push_url=crm.url, store_url=silent_url, hook_deadline_ms=deadline_ms,
                          answer_deadline_ms=deadline_ms, reconcile_s=0, deliver_timeout_ms=1000)
        call = player.FakeCall()
        held = []
        played = []
        for session in CALLS["in-801"]:
            began = time.monotonic()
            played.append(player.play([session], player.Script(env), call)[0])
            held.append(time.monotonic() - began)
        statuses = [p.status for p in played]
        assert "FAILED" not in statuses and "QUEUED" in statuses, (statuses, played[0].conversation.extra_stderr)
        assert max(held) < deadline_ms / 1000 + 0.5  # Python's start-up and exit around the deadline
        spool = tmp_path / "data" / "spool.sqlite3"
        assert (tmp_path / "data" / "spool.sqlite3.pending").exists()
        lite = Store(str(spool))
        [(spooled_id,)] = lite.conn.execute("SELECT id FROM calls").fetchall()
        assert lite.conn.execute("SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL").fetchone()[0] == 3
        lite.close()
    finally:
        silent.close()
    # The database answers again (on the same address) and so does the CRM: one pass of
    # the worker merges the spool and sends the events, in order.
    relay = TcpRelay(private_mariadb.port, port=port)
    try:
        crm.set_mode("ok")
        done = subprocess.run([os.path.join(BIN, "clinica-asterisk"), "deliver"], env=env, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert "sent 3, failed 0, waiting 0" in done.stdout
    finally:
        relay.close()
        crm.close()
    assert _accepted_in_order(crm) == {str(spooled_id): list(EVENTS)}
    shared = Store(url, busy_timeout_s=5.0)
    stored = shared.call(spooled_id)
    shared.close()
    assert stored["answered_by"] == "801" and stored["disposition"] == "ANSWER"
    figure("hook with a database that accepts and never answers (deadline 1000 ms)",
           f"hooks held the call {max(held) * 1000:.0f} ms at most (process spawn to exit), "
           f"statuses {statuses}; merged and sent after: 3 events")
