"""The fault-injection suite: the product's promises under the faults a PBX meets, with
real processes, real sockets, a real HTTP CRM and real SQLite.  docs/reliability.md lists
each promise and the test here (or in test_slow_crm_duplicates.py) that keeps it.

Every test stops by itself: bounded counts, bounded waits, loopback only."""

import http.client
import json
import os
import random
import resource
import signal
import socket
import sqlite3
import subprocess
import threading
import time

import pytest
from support import player
from support.api import api_settings, running_server, signed_body
from support.fake_asterisk import FakeCall, run_script
from support.faults import BIN, FaultyCrm, Serve, duplicates, environment, figure, pushes_of, wait_until, waiting

from clinica_asterisk.devtools.simulation import ARGS, recorded_calls, with_fresh_ids

pytestmark = pytest.mark.fault

ORDER = ["receivedTheCall", "answeredTheCall", "hangupTheCall"]  # the call in-801
QUICK = dict(hook_deadline_ms=500, deliver_timeout_ms=1500, deliver_max_backoff_s=1)


def calls(count, seed):
    return [with_fresh_ids(recorded_calls()["in-801"], random.Random(seed * 100 + n)) for n in range(count)]


def play(address, sessions_per_call):
    """The calls at once, each call's hooks in order; the statuses the hooks left."""
    statuses = []

    def one(sessions):
        statuses.extend(p.status for p in player.play(sessions, player.OverFastAgi(address, timeout_s=30)))

    threads = [threading.Thread(target=one, args=(s,)) for s in sessions_per_call]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return statuses


# --- the CRM misbehaving, then coming back ----------------------------------------------------

@pytest.mark.parametrize("mode, status", [("down", 0), ("hang", 0), ("status", 500), ("status", 503),
                                          ("redirect", 0)])
def test_whatever_the_crm_does_no_event_is_lost_or_sent_twice_and_each_call_keeps_its_order(mode, status, tmp_path):
    crm = FaultyCrm()
    port = crm.server_address[1]
    if mode == "down":
        crm.close()  # nothing listens there until it comes back
    else:
        crm.set_mode(mode, status=status)
    serve = Serve(environment(tmp_path, crm_push_url=f"http://127.0.0.1:{port}/api/Binotel/Push", **QUICK),
                  tmp_path / "serve.log")
    try:
        statuses = play(serve.address, calls(2, seed=len(mode) + status))
        # Every hook ended (within its deadline: the hang case too) and said QUEUED.
        assert set(statuses) <= {"QUEUED", "SKIPPED"}, statuses
        if mode == "down":
            crm = FaultyCrm(port=port)  # back, where it was
        else:
            crm.set_mode("ok")
        wait_until(lambda: waiting(tmp_path / "data") == 0 and crm.open_posts() == 0, "the backlog sent")
    finally:
        serve.stop()
        crm.close()
    accepted = crm.accepted()
    assert len(accepted) == 2 * len(ORDER) and duplicates(accepted) == 0, accepted
    assert crm.concurrent_copies() == 0
    assert list(pushes_of(crm).values()) == [ORDER] * 2


# --- the call store locked, the disk full -----------------------------------------------------

def test_a_locked_store_costs_each_hook_its_deadline_at_most_and_loses_nothing_stored(tmp_path):
    crm = FaultyCrm()
    env = environment(tmp_path, crm_push_url=crm.url, **QUICK)
    serve = Serve(env, tmp_path / "serve.log")
    try:
        first, second = calls(2, seed=31)
        assert play(serve.address, [first[:1]]) == ["SENT"]
        # Another program holds the store's write lock (a backup, an admin's sqlite3 shell).
        locker = sqlite3.connect(tmp_path / "data" / "clinica.sqlite3", timeout=1, isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
        try:
            started = time.monotonic()
            statuses = play(serve.address, [first[1:2], second[:1]])
            held_s = time.monotonic() - started
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        figure("store locked by another program (hook deadline 500 ms)",
               f"2 hooks FAILED, held {held_s * 1000:.0f} ms together")
        assert statuses == ["FAILED", "FAILED"]  # told, logged; the call went on
        assert held_s < 2 * 0.5 + 1.0  # two hooks one after the other, each within its deadline
        assert "call store busy" in (tmp_path / "serve.log").read_text()
        # Unlocked: the calls go on being reported, and what was stored went out.
        assert play(serve.address, [first[2:]]) == ["SENT"]
        wait_until(lambda: waiting(tmp_path / "data") == 0, "the backlog sent")
    finally:
        serve.stop()
        crm.close()
    assert duplicates(crm.accepted()) == 0


def disk_full():
    """A process on a full disk: no file of its may grow (a file-size limit answers as a
    full disk does: the write fails)."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (1, 1))


def empty_the_wal(data_dir):
    """SQLite rewrites its WAL in place once checkpointed: on a full disk a small write
    could still succeed.  Truncate it, so that every write must grow a file."""
    with sqlite3.connect(data_dir / "clinica.sqlite3", timeout=5) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def test_a_full_disk_fails_the_hook_cleanly_and_the_call_goes_on(tmp_path):
    from support.fake_asterisk import serve_session

    crm = FaultyCrm()
    env = environment(tmp_path, crm_push_url=crm.url, log_file="", **dict(QUICK, hook_deadline_ms=2000))
    first, second = calls(2, seed=41)
    call = FakeCall()
    run_script([os.path.join(BIN, "clinica-agi")], call, first[0].with_args(ARGS["ring-in"]), env)
    assert call.status_of("ring-in") == "SENT"
    empty_the_wal(tmp_path / "data")
    proc = subprocess.Popen([os.path.join(BIN, "clinica-agi")], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, preexec_fn=disk_full)
    other = FakeCall()
    try:
        conv = serve_session(other, second[0].with_args(ARGS["ring-in"]), proc.stdout.fileno(), proc.stdin.fileno(), 30)
        proc.stdin.close()
        assert proc.wait(30) == 0
        stderr = proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert other.status_of("ring-in") == "FAILED"
    assert any(c.startswith("VERBOSE") and "call store" in c for c in conv.commands), conv.commands
    assert "Traceback" not in stderr and "Logging error" not in stderr
    # Space again: the next call is reported, and what was stored before was sent.
    call = FakeCall()
    run_script([os.path.join(BIN, "clinica-agi")], call, second[0].with_args(ARGS["ring-in"]), env)
    assert call.status_of("ring-in") == "SENT"
    crm.close()
    assert len(crm.accepted()) == 2 and duplicates(crm.accepted()) == 0


def test_serve_on_a_full_disk_keeps_answering_and_sends_what_it_stored(tmp_path):
    import re

    crm = FaultyCrm()
    env = environment(tmp_path, crm_push_url=crm.url, **QUICK)
    first, second = calls(2, seed=43)
    serve = Serve(env, tmp_path / "serve.log")
    try:
        assert play(serve.address, [first[:1]]) == ["SENT"]
    finally:
        serve.stop()
    empty_the_wal(tmp_path / "data")
    proc = subprocess.Popen([os.path.join(BIN, "clinica-asterisk"), "serve", "--no-api", "--bind", "127.0.0.1:0"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=disk_full)
    log = []
    reader = threading.Thread(target=lambda: log.extend(line.decode() for line in proc.stderr), daemon=True)
    reader.start()
    try:
        wait_until(lambda: any("FastAGI listening on" in line for line in log), "serve started")
        port = int(re.search(r"listening on 127.0.0.1:(\d+)", "".join(log)).group(1))
        statuses = play(("127.0.0.1", port), [second])
        assert proc.poll() is None  # still serving
        # Told and logged; the call went on (its answer found no call stored: nothing to say).
        assert statuses[0] == "FAILED" and set(statuses) <= {"FAILED", "SKIPPED"}, statuses
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        reader.join(10)
    assert "outcome=FAILED" in "".join(log) and "call store" in "".join(log)
    assert "Traceback" not in "".join(log)
    assert len(crm.accepted()) == 1 and duplicates(crm.accepted()) == 0
    crm.close()


# --- bad bytes in every input -------------------------------------------------------------------

def peak_rss_kb(pid):
    """The most memory the process has held so far (its high-water mark)."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def test_garbage_from_many_fastagi_clients_at_once_is_read_no_further_than_its_limit(tmp_path):
    crm = FaultyCrm()
    serve = Serve(environment(tmp_path, crm_push_url=crm.url, fastagi_pool=64), tmp_path / "serve.log")
    garbage = (b"agi_request: agi://127.0.0.1/clinica-agi\n" + b"agi_arg_1: " + b"x" * 16000 + b"\n") * 512
    try:
        before = peak_rss_kb(serve.proc.pid)

        def flood():
            try:
                with socket.create_connection(serve.address, timeout=30) as sock:
                    sock.sendall(garbage)
            except OSError:
                pass  # dropped before all of it was sent: that is the point

        threads = [threading.Thread(target=flood) for _ in range(64)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        grown_mb = (peak_rss_kb(serve.proc.pid) - before) / 1024
        figure(f"FastAGI, 64 clients sending {len(garbage) >> 20} MB of env lines each",
               f"the server's peak memory grew by {grown_mb:.1f} MB")
        assert grown_mb < 40, f"the server grew by {grown_mb:.0f} MB for 64 clients of {len(garbage) >> 20} MB"
        assert play(serve.address, calls(1, seed=51)) == ["SENT", "SENT", "SENT"]  # and serves on
    finally:
        serve.stop()
        crm.close()


def raw_http(address, data):
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:  # refused mid-way (a header too large): said, then cut
                return received
            if not chunk:
                return received
            received += chunk


@pytest.mark.parametrize("request_bytes", [
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)),  # TLS to the plain port
    b"POST /api/2.0/stats/call-details.json HTTP/1.1\r\nHost: pbx\r\nContent-Length: 9\r\n\r\n\xff\xfe{\x00\x81}\xc0\xaf",
    b"POST /api/2.0/stats/call-details.json HTTP/1.1\r\nHost: p\xffbx\r\nX-Forwarded-Host: \xc3\x28\r\n"
    b"Content-Length: 2\r\n\r\n{}",
    b"POST /api/2.0/stats/call-details.json HTTP/1.1\r\nHost: pbx\r\nX-Pad: " + b"a" * 40000 + b"\r\n\r\n",
    b"POST /api/2.0/stats/call-details.json HTTP/1.1\r\nHost: pbx\r\nContent-Length: 99999999999\r\n\r\n{}",
    b"POST /api/2.0/stats/call-details.json HTTP/1.1\r\nHost: pbx\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n",
    b"GET /recording/99999999999999999999999.wav?Expires=9&Signature=" + b"A" * 43 + b" HTTP/1.1\r\nHost: pbx\r\n\r\n",
    b"GET /recording/1.wav?Expires=%ff%fe&Signature=%00 HTTP/1.1\r\nHost: pbx\r\nRange: bytes=\xff-\r\n\r\n",
    b"\x00" * 1000 + b"\r\n\r\n",
])
def test_bad_bytes_to_the_api_get_a_clear_answer_and_never_stop_it(request_bytes, tmp_path):
    with running_server(api_settings(tmp_path)) as server:
        answer = raw_http(server.address, request_bytes)
        status = answer.split(b" ", 2)[1] if answer.startswith(b"HTTP/1.") else b""
        assert status in (b"", b"200", b"400", b"403", b"404", b"405", b"413", b"431", b"501"), answer[:200]
        conn = http.client.HTTPConnection(*server.address, timeout=10)
        conn.request("POST", "/api/2.0/stats/call-details.json", body=json.dumps(signed_body({"generalCallID": [1]})))
        assert json.loads(conn.getresponse().read())["status"] == "success"  # and it answers on
        conn.close()


def test_bad_bytes_in_the_agi_env_block_and_answers_end_the_session_not_the_server(tmp_path):
    crm = FaultyCrm()
    serve = Serve(environment(tmp_path, crm_push_url=crm.url), tmp_path / "serve.log")
    try:
        for garbage in (bytes(range(256)) * 8 + b"\n\n", b"agi_request: \xff\xfe\x00\n\n", b"\n" * 1000,
                        b"agi_request: agi://x/clinica-agi\nagi_arg_1: ring-in\n\n" + b"\xff" * 70000):
            with socket.create_connection(serve.address, timeout=10) as sock:
                try:
                    sock.sendall(garbage)
                    sock.shutdown(socket.SHUT_WR)
                    while sock.recv(65536):
                        pass
                except OSError:
                    pass
        assert play(serve.address, calls(1, seed=61)) == ["SENT", "SENT", "SENT"]
    finally:
        serve.stop()
        crm.close()
    assert "Traceback" not in (tmp_path / "serve.log").read_text()
