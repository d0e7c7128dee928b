"""The call store on MariaDB (CLINICA_STORE_URL), shared by several nodes: its URL, its
schema and migrations, call ids unique across nodes, each event claimed by one worker,
the API of any node answering for every call, the outbox's transaction contract, the
local spool of a hook that cannot reach the server, two workers without a fault, TLS with
the server's certificate checked, and `doctor`.

Against the real mariadbd of the run (a database of each test's own); skipped without
mariadbd, failed under CI."""

import os
import socket
import threading
import time
from urllib.parse import quote

import pytest
from support import player
from support.api import CALLS, T0, Clock, api_settings, play, post
from support.mariadb import STORE_PASSWORD, TcpRelay
from support.net import free_port
from support.settings import make_settings

from clinica_asterisk.api.app import create_app
from clinica_asterisk.config import ConfigError, DEFAULTS, build_settings
from clinica_asterisk.delivery.sender import PushSender
from clinica_asterisk.hooks.stages import HookServices
from clinica_asterisk.store import engine
from clinica_asterisk.store.database import MYSQL_SCHEMA_VERSION, SPOOL_ID_BITS, Store, StoreError
from clinica_asterisk.store.outbox import Outbox, OutboxContractError, lease_owner


def _store(url, **kwargs):
    return Store(url, busy_timeout_s=kwargs.pop("busy_timeout_s", 5.0), **kwargs)


def _call(store, linkedid, pbx="pbx1", started=None):
    return store.insert_call({"pbx": pbx, "linkedid": linkedid, "direction": "in",
                              "started_at": started or time.time(), "dst_numbers": ["801"]})


# --- the URL ---------------------------------------------------------------------------

def test_the_store_url_is_checked_without_ever_quoting_it():
    good = "mysql://clinica:s3cr%40t@db.example:3307/clinica?ssl_ca=/etc/clinica-asterisk/db-ca.pem"
    settings = build_settings(dict(DEFAULTS, CLINICA_STORE_URL=good))
    assert settings.store_location == "mysql://clinica@db.example:3307/clinica?ssl_ca=/etc/clinica-asterisk/db-ca.pem"
    assert "s3cr" not in repr(settings) and "s3cr" not in settings.store_location
    assert settings.spool_path.endswith("spool.sqlite3")
    target = engine.parse_store_url(good)
    assert target.password == "s3cr@t"
    assert target.connect_args()["ssl"] == {"ca": "/etc/clinica-asterisk/db-ca.pem", "verify_mode": True,
                                            "check_hostname": True}
    relaxed = engine.parse_store_url(good + "&ssl_verify_identity=no")
    assert relaxed.connect_args()["ssl"]["check_hostname"] is False
    assert target.shown == "MariaDB db.example:3307, database clinica, TLS"
    socket_url = "mysql://clinica@localhost/clinica?unix_socket=/run/mysqld/mysqld.sock"
    assert engine.parse_store_url(socket_url).connect_args()["unix_socket"] == "/run/mysqld/mysqld.sock"
    assert build_settings(dict(DEFAULTS, CLINICA_STORE_URL=socket_url)).store_url == socket_url
    for bad in ("postgres://u:p4ssw0rd@h/db", "mysql://u:p4ssw0rd@h/", "mysql://u:p4ssw0rd@h:0/db",
                "mysql://u:p4ssw0rd@h/db?sslmode=require", "mysql://u:p4ssw0rd@h/a/b", "mysql://:p4ssw0rd@h/db",
                "mysql://u@h/db"):
        with pytest.raises(ConfigError, match="CLINICA_STORE_URL") as caught:
            build_settings(dict(DEFAULTS, CLINICA_STORE_URL=bad))
        assert "p4ssw0rd" not in str(caught.value)
    # The default: SQLite in the data directory, as before.
    default = build_settings(dict(DEFAULTS))
    assert default.store_location == default.db_path and default.spool_path is None


def test_sql_written_for_sqlite_runs_with_pymysql_placeholders():
    assert engine.translate("SELECT * FROM t WHERE a = ? AND b LIKE '50%?' AND c = ?") == \
        "SELECT * FROM t WHERE a = %s AND b LIKE '50%%?' AND c = %s"


# --- schema, ids, claims -----------------------------------------------------------------

def test_nodes_that_start_together_create_the_schema_once(shared_store_url, mariadb):
    stores, errors = [], []

    def open_one():
        try:
            stores.append(_store(shared_store_url))
        except Exception as exc:  # pragma: no cover - the assertion below shows it
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert {s.schema_version() for s in stores} == {MYSQL_SCHEMA_VERSION}
    database = shared_store_url.rsplit("/", 1)[1]
    conn = mariadb.root(database)
    with conn.cursor() as cursor:
        cursor.execute("SELECT version FROM clinica_schema")
        assert cursor.fetchall() == ((1,),)
    conn.close()
    # Its location names it without the password, and opens it again (the password of a
    # store this process opened is kept for it).
    assert STORE_PASSWORD not in stores[0].path
    again = Store(stores[0].path)
    assert again.schema_version() == MYSQL_SCHEMA_VERSION
    for store in [*stores, again]:
        store.close()


def test_call_ids_are_unique_across_nodes_and_above_the_clock(shared_store_url):
    before_ms = int(time.time() * 1000)
    ids, lock = [], threading.Lock()

    def node(name):
        store = _store(shared_store_url)
        for n in range(150):
            with store.transaction():
                call_id = _call(store, f"{name}-{n}", pbx=name)
            with lock:
                ids.append(call_id)
        store.close()

    threads = [threading.Thread(target=node, args=(f"node{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(ids) == len(set(ids)) == 600
    assert min(ids) >= before_ms - 60_000  # the AUTO_INCREMENT starts at the clock in ms


def test_each_event_is_claimed_by_one_worker_and_only_a_call_s_head(shared_store_url):
    store = _store(shared_store_url)
    outbox = Outbox(store)
    with store.transaction():
        calls = [_call(store, f"c{n}") for n in range(30)]
        for call_id in calls:
            for key in ("receivedTheCall", "answeredTheCall", "hangupTheCall"):
                outbox.enqueue(call_id, key, {"requestType": key})
    claimed, lock = [], threading.Lock()

    def worker(name):
        mine = Store(shared_store_url, busy_timeout_s=5.0)
        box = Outbox(mine)
        for event in box.heads(time.time()):
            if box.claim(event, f"{name}:1", time.time() + 60):
                with lock:
                    claimed.append((event.id, name))
        mine.close()

    threads = [threading.Thread(target=worker, args=(f"host{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    ids = [event_id for event_id, _ in claimed]
    assert len(ids) == len(set(ids)) == 30  # each call's head, each once
    heads = {e.call_id: e for e in outbox.pending_of_call(calls[0])}
    second = outbox.pending_of_call(calls[0])[1]
    assert not outbox.claim(second, "host9:1", time.time() + 60)  # its call's first is not delivered
    assert heads
    store.close()


def test_a_lease_of_a_dead_process_elsewhere_ends_with_its_time(shared_store_url):
    store = _store(shared_store_url)
    outbox = Outbox(store)
    now = time.time()
    with store.transaction():
        call_id = _call(store, "dead")
        event_id = outbox.enqueue(call_id, "receivedTheCall", {"requestType": "receivedTheCall"})
    store.write("UPDATE outbox SET lease_owner = ?, lease_until = ? WHERE id = ?", ("otherhost:4242", now + 30, event_id))
    assert outbox.heads(now) == []  # held by a process this host cannot see: its lease counts
    store.write("UPDATE outbox SET lease_until = ? WHERE id = ?", (now - 1, event_id))
    [head] = outbox.heads(now)
    assert outbox.claim(head, lease_owner(), now + 30)
    # A dead process of this host: free at once, as with SQLite.
    dead = subprocess_pid_that_exited()
    store.write("UPDATE outbox SET lease_owner = ?, lease_until = ? WHERE id = ?",
                (f"{socket.gethostname()}:{dead}", now + 30, event_id))
    [head] = outbox.heads(now)
    assert outbox.claim(head, lease_owner(), now + 30)
    store.close()


def subprocess_pid_that_exited() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --- the transaction contract, both engines -------------------------------------------------

@pytest.mark.parametrize("engine_name", ["sqlite", "mariadb"])
def test_enqueue_and_lease_pending_refuse_to_run_outside_a_transaction(engine_name, tmp_path, request):
    url = str(tmp_path / "clinica.sqlite3") if engine_name == "sqlite" else request.getfixturevalue("shared_store_url")
    store = _store(url)
    outbox = Outbox(store)
    with pytest.raises(OutboxContractError, match="inside Store.transaction"):
        outbox.enqueue(1, "receivedTheCall", {})
    with pytest.raises(OutboxContractError, match="inside Store.transaction"):
        outbox.lease_pending(1, lease_owner(), time.time() + 10)
    with store.transaction():
        assert outbox.enqueue(1, "receivedTheCall", {}) is not None
        leased, whole = outbox.lease_pending(1, lease_owner(), time.time() + 10)
    assert [e.request_type for e in leased] == ["receivedTheCall"] and whole
    store.close()


# --- the hooks of two nodes, the API of either --------------------------------------------

def _alternating(*services):
    """Each hook of a call on the next node: a call whose ring and hang-up reach different
    FastAGI VMs."""
    turn = iter(range(10 ** 6))
    hooks = [player.InProcess(s) for s in services]

    def run(call, session):
        return hooks[next(turn) % len(hooks)](call, session)

    return run


def test_the_api_of_either_node_answers_the_same_as_sqlite_for_calls_split_between_nodes(
        tmp_path, crm, shared_store_url):
    clock = Clock(T0)
    names = [n for n in CALLS if n != "click-to-call"]
    # SQLite, one node: the reference.
    lite = api_settings(tmp_path / "lite", crm_push_url=crm.url, company_id="10881")
    lite_services = HookServices(lite, Store(lite.db_path, clock=clock), PushSender(crm.url), "pbx1", clock=clock)
    lite_ids = {name: play(lite_services, clock, CALLS[name]) for name in names}
    # MariaDB, two nodes, each call's hooks alternating between them.
    shared = api_settings(tmp_path / "shared", crm_push_url=crm.url, company_id="10881", store_url=shared_store_url)
    clock.now = T0
    nodes = [HookServices(shared, Store(shared.store_location, clock=clock), PushSender(crm.url), "pbx1", clock=clock)
             for _ in range(2)]
    shared_ids = {}
    for name in names:
        clock.now += 60

        def tick(session):
            clock.now += {"ring-in": 0, "predial-ringall": 1, "predial-one": 1, "predial-trunk": 1, "answer": 5,
                          "hangup": 30}[session.extra["hook"]]

        played = player.play(CALLS[name], _alternating(*nodes), before=tick)
        shared_ids[name] = next(p.result.call_id for p in played if p.result.call_id)
    assert len(set(shared_ids.values())) == len(names)

    def details(settings, ids):
        app = create_app(settings)
        app.extensions["clinica_api"].clock = clock
        status, answer = post(app.test_client(), "/api/2.0/stats/call-details.json", {"generalCallID": list(ids)})
        assert status == 200 and answer["status"] == "success", answer
        return answer["callDetails"]

    def without_ids(entry):
        return {k: v for k, v in entry.items() if k not in ("generalCallID", "callID")}

    reference = details(lite, lite_ids.values())
    for _ in range(2):  # the API of each node (a process of its own would do the same)
        found = details(shared, shared_ids.values())
        assert {n: without_ids(found[str(shared_ids[n])]) for n in names} == \
            {n: without_ids(reference[str(lite_ids[n])]) for n in names}
    # A stats method that lists calls, on the shared store.
    app = create_app(shared)
    app.extensions["clinica_api"].clock = clock
    status, answer = post(app.test_client(), "/api/2.0/stats/list-of-calls-for-period.json",
                          {"startTime": int(T0), "stopTime": int(T0) + 3600})
    assert status == 200 and set(answer["callDetails"]) == {str(i) for i in shared_ids.values()}


# --- a hook that cannot reach the server --------------------------------------------------

def test_a_hook_spools_while_the_server_is_out_of_reach_and_the_worker_merges_it(tmp_path, crm, shared_store_url,
                                                                              mariadb):
    port = free_port()
    url = shared_store_url.replace(f":{mariadb.port}/", f":{port}/")  # nothing listens there yet
    settings = make_settings(tmp_path / "data", crm_push_url=crm.url, store_url=url, hook_deadline_ms=1000)
    services = HookServices.open(settings, pbx="pbx1")
    assert services.store.spooling and services.store.path == settings.spool_path
    results, _ = player.play_freepbx_call(services, CALLS["in-801"])
    spooled_id = next(r.call_id for r in results if r.call_id)
    assert spooled_id < 1 << (SPOOL_ID_BITS + 10)  # the spool's own range, below the shared ids
    assert [r.status for r in results if r.status not in ("SKIPPED",)] == ["SENT"] * 3  # the CRM got them
    assert os.path.exists(settings.spool_path + ".pending")
    # The server is back: the worker's next pass merges the spool, then finds nothing to send.
    relay = TcpRelay(mariadb.port, port=port)
    try:
        worker = Store(settings.store_location, busy_timeout_s=5.0, spool_path=settings.spool_path)
        outbox = Outbox(worker)
        assert outbox.heads(time.time()) == []
        call = worker.call(spooled_id)
        assert call is not None and call["answered_by"] == "801" and call["ended_at"] is not None
        rows = worker.conn.execute("SELECT request_type, delivered_at FROM outbox WHERE call_id = ? ORDER BY id",
                                   (spooled_id,)).fetchall()
        assert [r["request_type"] for r in rows] == ["receivedTheCall", "answeredTheCall", "hangupTheCall"]
        assert all(r["delivered_at"] for r in rows)
        assert not os.path.exists(settings.spool_path + ".pending")
        assert Store(settings.spool_path).conn.execute("SELECT COUNT(*) FROM calls").fetchone()[0] == 0
        # A hook of a new call goes to the server again (after the one second it waits
        # before trying a server it could not reach).
        time.sleep(1.1)  # the back-off the hooks keep, not a synchronisation
        services.store.start_session(1.0)
        assert not services.store.spooling
        worker.close()
    finally:
        relay.close()


def test_a_spooled_call_s_later_hooks_find_it_once_merged_by_a_hook(tmp_path, crm, shared_store_url, mariadb):
    port = free_port()
    url = shared_store_url.replace(f":{mariadb.port}/", f":{port}/")
    settings = make_settings(tmp_path / "data", crm_push_url=crm.url, store_url=url, hook_deadline_ms=1000)
    sessions = CALLS["in-801"]
    call = player.FakeCall()
    first = player.play(sessions[:1], player.InProcess(HookServices.open(settings, pbx="pbx1")), call)
    relay = TcpRelay(mariadb.port, port=port)
    try:
        engine.GAVE_UP.succeeded(Store(settings.store_location, busy_timeout_s=1.0).location)
        later = HookServices.open(settings, pbx="pbx1")
        rest = player.play(sessions[1:], player.InProcess(later), call)
        ids = {p.result.call_id for p in [*first, *rest] if p.result.call_id}
        assert len(ids) == 1 and not later.store.spooling
        stored = later.store.call(ids.pop())
        assert stored["answered_by"] == "801" and stored["disposition"] == "ANSWER"
    finally:
        relay.close()


def test_a_store_that_cannot_be_reached_fails_a_request_with_a_message_without_the_password(tmp_path):
    url = f"mysql://clinica:{quote(STORE_PASSWORD, safe='')}@127.0.0.1:{free_port()}/clinica"
    store = Store(url, busy_timeout_s=0.5)
    with pytest.raises(StoreError) as caught:
        store.conn.execute("SELECT 1")
    assert STORE_PASSWORD not in str(caught.value) and "127.0.0.1" in str(caught.value)


# --- doctor ---------------------------------------------------------------------------------

def test_doctor_shows_the_shared_store_its_version_and_backlog_never_the_password(tmp_path, shared_store_url,
                                                                                capsys, monkeypatch):
    from clinica_asterisk.cli import doctor
    from clinica_asterisk.config import load_settings

    env_file = tmp_path / "clinica.env"
    env_file.write_text(f"CLINICA_DATA_DIR={tmp_path / 'data'}\nCLINICA_STORE_URL={shared_store_url}\n"
                        "CLINICA_FREEPBX_DB=off\n")
    for key in [k for k in os.environ if k.startswith("CLINICA_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("CLINICA_ENV_FILE", str(env_file))
    settings = load_settings()
    store = Store(settings.store_location, busy_timeout_s=5.0)
    with store.transaction():
        Outbox(store).enqueue(_call(store, "w"), "receivedTheCall", {"requestType": "receivedTheCall"})
    store.close()
    check = doctor.check_outbox(doctor.Context(settings=settings, timeout_s=2.0, environ={}))
    assert check.status == "OK", check
    assert "1 event(s) waiting" in check.detail and "schema version 1" in check.detail
    assert "MariaDB 127.0.0.1:" in check.detail and STORE_PASSWORD not in check.detail
    assert "%3A" not in check.detail  # nor its URL-encoded form
    # The whole doctor, as a command: the store's line, the secret named, never its value.
    import subprocess
    import sys

    done = subprocess.run([os.path.join(os.path.dirname(sys.executable), "clinica-asterisk"), "doctor",
                           "--timeout", "1"], env=dict(os.environ, PATH=""), capture_output=True, text=True,
                          timeout=60)
    assert "CLINICA_STORE_URL" in done.stdout and "schema version 1" in done.stdout
    for secret in (STORE_PASSWORD, quote(STORE_PASSWORD, safe="")):
        assert secret not in done.stdout + done.stderr


# --- two workers, no fault: each event once ---------------------------------------------------

def test_two_workers_sharing_the_outbox_send_each_event_exactly_once_and_in_order(shared_store_url):
    from support.faults import FaultyCrm

    from clinica_asterisk.delivery.worker import deliver_pass

    store = _store(shared_store_url)
    outbox = Outbox(store)
    keys = ("receivedTheCall", "answeredTheCall", "hangupTheCall")
    with store.transaction():
        for n in range(300):
            call_id = _call(store, f"w{n}")
            for key in keys:
                outbox.enqueue(call_id, key, {"requestType": key, "generalCallID": str(call_id)})
    crm = FaultyCrm("ok")
    errors = []

    def worker():
        mine = Outbox(Store(shared_store_url, busy_timeout_s=5.0))
        sender = PushSender(crm.url)
        try:
            end = time.monotonic() + 60
            while mine.backlog()[0] and time.monotonic() < end:
                deliver_pass(mine, sender, 5.0, 1.0, due_only=False)
        except Exception as exc:  # pragma: no cover - shown by the assertion
            errors.append(exc)
        finally:
            sender.close()
            mine.store.close()

    try:
        threads = [threading.Thread(target=worker) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        accepted = crm.accepted()
        with crm.lock:
            order = {}
            for p in crm.posts:
                order.setdefault(p.key[0], []).append(p.key[1])
    finally:
        crm.close()
        store.close()
    assert not errors
    assert len(accepted) == 900 and set(accepted.values()) == {1}  # (a lost "delivered" would resend one)
    assert all(events == list(keys) for events in order.values())


# --- TLS to a database on another host ------------------------------------------------------

def test_a_store_reached_over_tls_checks_the_server_against_the_configured_ca(tmp_path):
    import shutil as _shutil

    from conftest import require_mariadbd
    from support.mariadb import MariaDb, STORE_USER

    require_mariadbd("the shared store's TLS test")
    if not _shutil.which("openssl"):
        pytest.skip("openssl is not installed: no certificate for the server")
    base = tmp_path / "mdb"
    base.mkdir()
    server = MariaDb(base)
    ca = server.with_tls()
    server.start()
    try:
        url = server.create_store("clinica")
        server.execute(*[f"ALTER USER '{STORE_USER}'@'{host}' REQUIRE SSL" for host in ("127.0.0.1", "localhost")],
                       database=None)
        # With the CA in the URL's query: TLS, the server's certificate checked.
        settings = make_settings(tmp_path / "data", store_url=f"{url}?ssl_ca={ca}")
        store = Store(settings.store_location, busy_timeout_s=5.0)
        (cipher,) = store.conn.execute("SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS "
                                       "WHERE VARIABLE_NAME = 'Ssl_cipher'").fetchone()
        assert cipher
        assert store.schema_version() == MYSQL_SCHEMA_VERSION
        store.close()
        # Another CA's certificate is refused.
        other = MariaDb(tmp_path / "other")
        (tmp_path / "other").mkdir()
        wrong_ca = other.with_tls()
        wrong = Store(f"{url}?ssl_ca={wrong_ca}", busy_timeout_s=5.0)
        with pytest.raises(StoreError, match="cannot reach the shared store"):
            wrong.conn.execute("SELECT 1")
    finally:
        server.stop()
