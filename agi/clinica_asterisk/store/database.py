"""The call store: one SQLite database in the data directory, or one MariaDB database
that several nodes share (``CLINICA_STORE_URL``, :mod:`.engine`).

SQLite: WAL mode lets many AGI processes and the services read and write at once; every
write is a short ``BEGIN IMMEDIATE`` transaction with a bounded busy timeout, so a locked
database costs a hook at most its deadline.  ``synchronous=NORMAL`` keeps every committed
transaction across a crash or SIGKILL of any process (it can lose the last ones only on a
power failure of the host).

MariaDB (InnoDB, READ COMMITTED): a transaction locks the rows of the call it changes
(:meth:`Store.call` inside :meth:`Store.transaction` reads ``FOR UPDATE``), so the hooks of
one call, on any node, write one after the other and its events get ids in the order they
happened.  Call ids come from the table's AUTO_INCREMENT, which starts at the clock in
milliseconds when the table is made (so ids stay larger than those of an SQLite store it
replaces, and unique across every node).  A hook that cannot reach the server writes to
a local *spool* (an SQLite store in the data directory, :meth:`Store.start_session`), with
ids of a range of its own (:func:`spool_call_id_floor`); what it holds is merged into the
shared store when the server is back (:meth:`Store.merge_spool`).

Tables: ``calls`` (the facts of each call, read by the API) and ``outbox`` (push events
not yet delivered, see :mod:`.outbox`, which also holds the outbox's schema).  The schema
is versioned per engine: SQLite's in ``PRAGMA user_version`` (:data:`SCHEMA` is version 1,
each entry of :data:`MIGRATIONS` takes it one version further), MariaDB's in the table
``clinica_schema`` (:data:`MYSQL_MIGRATIONS`, from version 1); opening a store brings it to
the program's version, once, also when several processes open it at the same moment.
"""

from __future__ import annotations

import collections
import json
import os
import _socket  # socket.gethostname is _socket.gethostname; socket.py costs every hook start-up
import _sqlite3 as sqlite3  # the sqlite3 package: this, and datetime adapters (datetime costs every hook start-up)
import _thread  # threading.Lock is _thread.allocate_lock, get_ident the same
import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (type checkers read it so)
if TYPE_CHECKING:
    from typing import Any, Dict, List, Mapping, Optional

from .engine import (GAVE_UP, MysqlConnection, StoreBusy, StoreError, StoreUnreachable, StoreUrlError,
                     is_mysql_url, node_number, resolve)
from .outbox import MYSQL_OUTBOX_SCHEMA, SQLITE_OUTBOX_SCHEMA, lease_is_free_row


CALLS_SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    id              INTEGER PRIMARY KEY,   -- generalCallID
    pbx             TEXT NOT NULL DEFAULT '',
    linkedid        TEXT,                  -- Asterisk LINKEDID frozen at entry
    direction       TEXT NOT NULL CHECK (direction IN ('in', 'out')),
    origin          TEXT NOT NULL DEFAULT 'pbx',   -- 'api' for click-to-call
    started_at      REAL NOT NULL,
    src_number      TEXT NOT NULL DEFAULT '',  -- caller id / dialled number as received
    external_number TEXT NOT NULL DEFAULT '',  -- the client's number, normalised
    did             TEXT NOT NULL DEFAULT '',
    internal_number TEXT NOT NULL DEFAULT '',  -- target rung (in) or calling extension (out)
    dst_numbers     TEXT NOT NULL DEFAULT '[]',
    answered_by     TEXT,
    answered_at     REAL,
    ended_at        REAL,
    billsec         INTEGER,
    disposition     TEXT,
    recording_file  TEXT NOT NULL DEFAULT '',
    trunk           TEXT NOT NULL DEFAULT '',
    UNIQUE (pbx, linkedid)
);
CREATE INDEX IF NOT EXISTS calls_by_external ON calls (external_number, started_at);
"""
# Version 1 of an SQLite store: the calls and the outbox.
SCHEMA = CALLS_SCHEMA + SQLITE_OUTBOX_SCHEMA

# MIGRATIONS[n] takes a store of version n + 1 to version n + 2.
MIGRATIONS = (
    # 2: transfers.  transferred_to: the employee who has the client after the last
    # transfer; transfers: how many there were; pending_transfer: an attended transfer's
    # target that answered the consultation (or "-" once the transferer left first);
    # pre_answered: the PBX answered the client before any employee did (an IVR, an
    # announcement, a queue), so Dial's ANSWEREDTIME counts too much.
    """
    ALTER TABLE calls ADD COLUMN transferred_to TEXT NOT NULL DEFAULT '';
    ALTER TABLE calls ADD COLUMN transfers INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE calls ADD COLUMN pending_transfer TEXT NOT NULL DEFAULT '';
    ALTER TABLE calls ADD COLUMN pre_answered INTEGER NOT NULL DEFAULT 0;
    """,
    # 3: the API's stats methods.  Calls by time (list-of-calls-per-day, the lost calls,
    # by employee), by direction and time (incoming/outgoing for a period or since), and
    # the calls still up (online-calls; a partial index holds only those).
    """
    CREATE INDEX IF NOT EXISTS calls_by_start ON calls (started_at);
    CREATE INDEX IF NOT EXISTS calls_by_direction_start ON calls (direction, started_at);
    CREATE INDEX IF NOT EXISTS calls_online ON calls (started_at) WHERE ended_at IS NULL;
    """,
)
SCHEMA_VERSION = 1 + len(MIGRATIONS)

# The same tables on MariaDB.  Text that an index holds is VARCHAR (an index cannot hold
# TEXT whole), compared byte for byte (utf8mb4_bin) as SQLite does; MariaDB has no partial
# index, so the open calls are found by (ended_at, pbx).  {first_id}: the clock in ms.
MYSQL_CALLS_SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    id              BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    pbx             VARCHAR(255) NOT NULL DEFAULT '',
    linkedid        VARCHAR(255) NULL,
    direction       VARCHAR(3) NOT NULL CHECK (direction IN ('in', 'out')),
    origin          VARCHAR(16) NOT NULL DEFAULT 'pbx',
    started_at      DOUBLE NOT NULL,
    src_number      TEXT NOT NULL DEFAULT '',
    external_number VARCHAR(255) NOT NULL DEFAULT '',
    did             TEXT NOT NULL DEFAULT '',
    internal_number VARCHAR(255) NOT NULL DEFAULT '',
    dst_numbers     TEXT NOT NULL DEFAULT '[]',
    answered_by     VARCHAR(255) NULL,
    answered_at     DOUBLE NULL,
    ended_at        DOUBLE NULL,
    billsec         INT NULL,
    disposition     VARCHAR(32) NULL,
    recording_file  TEXT NOT NULL DEFAULT '',
    trunk           TEXT NOT NULL DEFAULT '',
    transferred_to  VARCHAR(255) NOT NULL DEFAULT '',
    transfers       INT NOT NULL DEFAULT 0,
    pending_transfer TEXT NOT NULL DEFAULT '',
    pre_answered    INT NOT NULL DEFAULT 0,
    UNIQUE KEY calls_by_linkedid (pbx, linkedid),
    KEY calls_by_external (external_number, started_at),
    KEY calls_by_start (started_at),
    KEY calls_by_direction_start (direction, started_at),
    KEY calls_online (ended_at, pbx, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin AUTO_INCREMENT={first_id}
"""
# MYSQL_MIGRATIONS[n] takes a MariaDB store from version n to n + 1 (0: empty database).
MYSQL_MIGRATIONS = (
    MYSQL_CALLS_SCHEMA + ";" + MYSQL_OUTBOX_SCHEMA,
)
MYSQL_SCHEMA_VERSION = len(MYSQL_MIGRATIONS)

CALL_FIELDS = (
    "pbx", "linkedid", "direction", "origin", "started_at", "src_number", "external_number",
    "did", "internal_number", "dst_numbers", "answered_by", "answered_at", "ended_at",
    "billsec", "disposition", "recording_file", "trunk", "transferred_to", "transfers",
    "pending_transfer", "pre_answered",
)

# A call id is a positive SQLite INTEGER (a signed 64-bit number).
MAX_CALL_ID = 2 ** 63 - 1
# Calls a hook stores in its spool, while the shared store is out of reach, get ids below
# 2**40 (1.1e12): node (1 … 1023) * 2**30 + a count the spool keeps.  The shared store's
# ids start at the clock in milliseconds (1.7e12 in 2024), so the two ranges never meet.
SPOOL_ID_BITS = 30
SPOOL_NAME = "spool.sqlite3"


def spool_call_id_floor(host: str) -> int:
    return node_number(host) << SPOOL_ID_BITS


def call_id_from_text(text: str) -> Optional[int]:
    """The call id ``text`` spells in ASCII digits (no sign, no space), or None.  Pure."""
    if not (text and text.isascii() and text.isdigit() and len(text) <= 19):
        return None
    number = int(text)
    return number if 0 < number <= MAX_CALL_ID else None


def connect(path: str, busy_timeout_s: float = 2.0) -> sqlite3.Connection:
    directory = os.path.dirname(path)
    try:
        if directory:
            os.makedirs(directory, exist_ok=True)
        conn = sqlite3.connect(path, timeout=max(0.05, busy_timeout_s), isolation_level=None,
                               check_same_thread=False)
        conn.row_factory = sqlite3.Row
        if conn.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
            create_schema(conn)
        conn.execute("PRAGMA synchronous=NORMAL")
    except (sqlite3.Error, OSError) as exc:
        raise StoreError(f"cannot open the call store {path}: {exc}") from exc
    return conn


def _statements(script: str):
    return [statement for statement in script.split(";") if statement.strip()]


def create_schema(conn: sqlite3.Connection) -> None:
    """Create the tables or bring them to :data:`SCHEMA_VERSION`, once, also when several
    hooks open the store at the same moment."""
    try:
        conn.execute("PRAGMA journal_mode=WAL")
    except sqlite3.OperationalError:
        pass  # another connection holds the database: it is setting WAL itself (it persists)
    conn.execute("BEGIN IMMEDIATE")  # waits (busy timeout) for the one creating it
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(f"the store has schema version {version}, newer than this "
                                        f"program's {SCHEMA_VERSION}: upgrade clinica-asterisk")
        if version == 0:
            for statement in _statements(SCHEMA):
                conn.execute(statement)
            version = 1
        for migration in MIGRATIONS[version - 1:]:
            for statement in _statements(migration):
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def mysql_schema_version(conn: MysqlConnection) -> int:
    try:
        row = conn.execute("SELECT MAX(version) FROM clinica_schema").fetchone()
    except StoreError as exc:
        if "(1146)" in str(exc):  # no such table: an empty database
            return 0
        raise
    return int(row[0] or 0)


def create_mysql_schema(conn: MysqlConnection) -> None:
    """Bring a MariaDB store to :data:`MYSQL_SCHEMA_VERSION` (run on every new connection:
    one SELECT when it is there).  Nodes that start together take turns on a named lock;
    every statement of a migration may run twice (MariaDB commits each DDL statement at
    once, so a migration cut in the middle is simply run again)."""
    version = mysql_schema_version(conn)
    if version == MYSQL_SCHEMA_VERSION:
        return
    if version > MYSQL_SCHEMA_VERSION:
        raise StoreError(f"the shared store has schema version {version}, newer than this program's "
                         f"{MYSQL_SCHEMA_VERSION}: upgrade clinica-asterisk on this node")
    if not conn.execute("SELECT GET_LOCK('clinica_schema', 30)").fetchone()[0]:
        raise StoreError("the shared store's schema is being changed by another node for too long")
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS clinica_schema (version INT NOT NULL PRIMARY KEY, "
                     "applied_at DOUBLE NOT NULL) ENGINE=InnoDB")
        version = mysql_schema_version(conn)
        for n in range(version, MYSQL_SCHEMA_VERSION):
            script = MYSQL_MIGRATIONS[n].replace("{first_id}", str(int(time.time() * 1000)))
            conn.executescript(script)
            conn.execute("INSERT IGNORE INTO clinica_schema (version, applied_at) VALUES (?, ?)",
                         (n + 1, time.time()))
    finally:
        conn.execute("SELECT RELEASE_LOCK('clinica_schema')")


class FairLock:
    """A re-entrant lock handed over in the order it was asked for, so that no writer
    waits for many others that came after it (the tail of the hooks' hold time)."""

    def __init__(self):
        self._mutex = _thread.allocate_lock()
        self._waiters: "collections.deque[_thread.LockType]" = collections.deque()
        self._owner: Optional[int] = None
        self._depth = 0

    def acquire(self, timeout: float = -1) -> bool:
        me = _thread.get_ident()
        with self._mutex:
            if self._owner == me:
                self._depth += 1
                return True
            if self._owner is None and not self._waiters:
                self._owner, self._depth = me, 1
                return True
            turn = _thread.allocate_lock()
            turn.acquire()
            self._waiters.append(turn)
        if turn.acquire(timeout=timeout):
            self._owner, self._depth = me, 1  # handed over by release()
            return True
        with self._mutex:
            try:
                self._waiters.remove(turn)
                return False
            except ValueError:  # handed over just as the wait ended
                pass
        turn.acquire()
        self._owner, self._depth = me, 1
        return True

    def release(self) -> None:
        with self._mutex:
            self._depth -= 1
            if self._depth:
                return
            self._owner = None
            if self._waiters:
                self._owner = -1  # reserved for the next in line
                self._waiters.popleft().release()


_WRITE_LOCKS: Dict[str, FairLock] = {}
_WRITE_LOCKS_GUARD = _thread.allocate_lock()
_WRITE_LOCKS_BY_NAME: Dict[str, FairLock] = {}


def _write_lock(path: str) -> FairLock:
    """One lock per database and process.  Threads of one process (the FastAGI server's
    workers) queue on it instead of on SQLite's busy handler, which sleeps in steps of up
    to 100 ms and so lets the lock sit idle while writers wait."""
    lock = _WRITE_LOCKS_BY_NAME.get(path)  # realpath() costs more than a hook's write
    if lock is None:
        key = path if is_mysql_url(path) else os.path.realpath(path)
        with _WRITE_LOCKS_GUARD:
            lock = _WRITE_LOCKS_BY_NAME[path] = _WRITE_LOCKS.setdefault(key, FairLock())
    return lock


# How much of a hook's time it may spend reaching a shared store before it spools.
CONNECT_SHARE = 0.25
CONNECT_MAX_S = 0.5
# A hook merges at most this many spooled calls; the worker merges the rest.
HOOK_MERGE_LIMIT = 50


class Store:
    """Calls and their facts.  One instance per thread (connections are not shared).

    ``path``: an SQLite file, or a ``mysql://`` URL (the shared store; the password may be
    left out when the configuration holds it, see :func:`.engine.resolve`).  For a shared
    store, ``spool_path`` is the local SQLite spool that :meth:`merge_spool` empties into
    it, and with ``spool_on_failure`` (the hooks) :meth:`start_session` writes there while
    the server is out of reach."""

    def __init__(self, path: str, busy_timeout_s: float = 2.0, clock=time.time,
                 spool_path: Optional[str] = None, spool_on_failure: bool = False):
        self.clock = clock
        self._busy_timeout_s = busy_timeout_s
        self.spool_path = spool_path
        self.spool_on_failure = bool(spool_path) and spool_on_failure
        self._mysql: Optional[MysqlConnection] = None
        self._sqlite: Optional[sqlite3.Connection] = None
        self._spooling = False
        self._reserved: set = set()
        self._grouped = False  # inside group(): transactions are savepoints
        if is_mysql_url(path):
            try:
                target = resolve(path)
            except StoreUrlError as exc:
                raise StoreError(f"CLINICA_STORE_URL: {exc}") from None
            self.location = target.location
            self._mysql = MysqlConnection(target, busy_timeout_s, on_connect=create_mysql_schema)
            if self.spool_on_failure:
                if not self._reach(self._connect_budget(busy_timeout_s)):
                    self._use_spool()
            else:
                try:
                    self._mysql.connect()
                except StoreError:
                    pass  # opened again at the first statement, which then says why it cannot
        else:
            self.location = path
            self._sqlite = connect(path, busy_timeout_s)

    # --- which database --------------------------------------------------------------

    @property
    def path(self) -> str:
        """Where this store's writes go now: the SQLite file (the spool while spooling), or
        the shared store's location (its URL without the password)."""
        return self.spool_path if self._spooling else self.location

    @property
    def conn(self):
        """The connection in use: ``sqlite3.Connection``, or :class:`.engine.MysqlConnection`
        (the same ``execute`` and rows)."""
        return self._sqlite if self._sqlite is not None and (self._mysql is None or self._spooling) else self._mysql

    @property
    def dialect(self) -> str:
        return "mysql" if self.conn is self._mysql else "sqlite"

    @property
    def shared(self) -> bool:
        """A MariaDB store (several nodes may use it), spooling or not."""
        return self._mysql is not None

    @property
    def spooling(self) -> bool:
        return self._spooling

    @property
    def in_transaction(self) -> bool:
        conn = self.conn
        return bool(conn.in_transaction)

    @property
    def _write_lock(self) -> FairLock:
        return _write_lock(self.path)

    @staticmethod
    def _connect_budget(seconds: float) -> float:
        return max(0.05, min(CONNECT_MAX_S, seconds * CONNECT_SHARE))

    def _reach(self, timeout_s: float) -> bool:
        """The shared server answers: the open connection (a ping), else a new one within
        ``timeout_s`` (not tried at all if one failed this last second: the hooks of a
        busy PBX must not each wait for a server that is gone)."""
        if self._mysql.alive():
            return True
        if GAVE_UP.recently(self.location):
            return False
        if self._mysql.reconnect(timeout_s):
            GAVE_UP.succeeded(self.location)
            return True
        GAVE_UP.failed(self.location)
        return False

    def _use_spool(self) -> None:
        if self._sqlite is None:
            self._sqlite = connect(self.spool_path, self._busy_timeout_s)
            self._sqlite.execute("CREATE TABLE IF NOT EXISTS spool_ids (node INTEGER NOT NULL, last INTEGER NOT NULL)")
        self._spooling = True

    def start_session(self, busy_timeout_s: float) -> None:
        """A hook begins: every store operation that follows is bounded by
        ``busy_timeout_s``.  For a shared store this is also where a hook chooses where
        to write: the server if it answers (within a quarter of the time, at most 0.5 s),
        else the spool; and back on the server, the spool is merged first (some calls of
        it, :data:`HOOK_MERGE_LIMIT`) so that the hook finds a call it spooled."""
        if self._mysql is not None and self.spool_on_failure:
            if self._reach(self._connect_budget(busy_timeout_s)):
                self._spooling = False
                if self.spool_pending():
                    try:
                        self.merge_spool(limit=HOOK_MERGE_LIMIT)
                    except StoreError:
                        pass  # the worker merges it
            else:
                self._use_spool()
        self.set_busy_timeout(busy_timeout_s)

    def close(self) -> None:
        if self._sqlite is not None:
            self._sqlite.close()
        if self._mysql is not None:
            self._mysql.close()

    def set_busy_timeout(self, seconds: float) -> None:
        self._busy_timeout_s = seconds
        if self.dialect == "mysql":
            self._mysql.set_lock_wait(seconds)
        else:
            self.conn.execute(f"PRAGMA busy_timeout={max(1, int(seconds * 1000))}")

    def transaction(self) -> _Transaction:
        """A write transaction (``with store.transaction() as conn:``).  SQLite: it takes the
        write lock at once (no upgrade deadlocks).  MariaDB: rows are locked as they are
        written, and :meth:`call` locks the call it reads.  The outbox's writes belong in
        one (:mod:`.outbox`)."""
        return _Transaction(self)

    def group(self) -> _Group:
        """Group commit: one transaction, committed once, in which every
        :meth:`transaction` opened inside it (on this thread) runs as a savepoint, and
        every :meth:`write` as a statement.  A transaction that fails rolls back to its
        savepoint alone; a failed commit fails them all (the caller learns it before it
        answers anyone).  The FastAGI event loop gathers the writes of the hooks that
        reached their store step in one turn (:mod:`..hooks.fastagi_loop`)."""
        return _Group(self)

    def write(self, sql: str, params=()) -> int:
        """One write statement as a transaction of its own; how many rows it changed
        (matched, on MariaDB too).

        Cheaper than :meth:`transaction` for a single statement: one call into SQLite,
        so the write lock is held for the shortest time."""
        if not self._write_lock.acquire(timeout=max(0.05, self._busy_timeout_s)):
            raise StoreError("call store busy: other writers of this process held it too long")
        try:
            if self.dialect == "mysql":
                return self._write_until_reached(sql, params)
            return self.conn.execute(sql, params).rowcount
        except sqlite3.Error as exc:
            raise StoreError(f"call store busy or unwritable: {exc}") from exc
        finally:
            self._write_lock.release()

    def _write_until_reached(self, sql: str, params) -> int:
        """A shared store's single write, tried again while the server is out of reach or
        after a deadlock broke it, for the busy timeout at most.  These writes record a lease or an attempt's outcome: a
        database that restarts within the lease's margin then costs no second copy of an
        event.  (Each may run twice: a lease taken again, an event marked delivered again.)"""
        end = time.monotonic() + self._busy_timeout_s
        while True:
            try:
                return self.conn.execute(sql, params).rowcount
            except StoreBusy:
                if time.monotonic() > end:
                    raise
                continue  # a deadlock's victim: its statement was undone whole, run it again
            except StoreUnreachable:
                if time.monotonic() + 0.2 > end:
                    raise
            time.sleep(0.2)  # the server is restarting or the network is back in a moment

    # --- calls ---------------------------------------------------------------------

    def new_call_id(self) -> int:
        """A positive int64 that no other call has.  SQLite: larger than any id this store
        ever gave and than the clock in milliseconds, so ids stay unique across restarts
        and even after the store is recreated.  MariaDB: the next AUTO_INCREMENT id, held
        by a placeholder row that :meth:`insert_call` with this id fills.  Call inside
        :meth:`transaction`."""
        if self.dialect == "mysql":
            call_id = self.conn.execute("INSERT INTO calls (direction, started_at, origin) VALUES ('out', ?, 'api')",
                                        (self.clock(),)).lastrowid
            self._reserved.add(call_id)
            return call_id
        if self._spooling:
            return self._next_spool_id()
        (highest,) = self.conn.execute("SELECT COALESCE(MAX(id), 0) FROM calls").fetchone()
        return max(highest + 1, int(self.clock() * 1000))

    def _next_spool_id(self) -> int:
        if not self.conn.execute("UPDATE spool_ids SET last = last + 1").rowcount:
            self.conn.execute("INSERT INTO spool_ids (node, last) VALUES (?, 1)",
                              (node_number(_socket.gethostname()),))
        (node, last) = self.conn.execute("SELECT node, last FROM spool_ids").fetchone()
        return (node << SPOOL_ID_BITS) + last

    def insert_call(self, fields: Mapping[str, Any]) -> int:
        row = {k: fields[k] for k in CALL_FIELDS if k in fields}
        if isinstance(row.get("dst_numbers"), (list, tuple)):
            row["dst_numbers"] = json.dumps(list(row["dst_numbers"]))
        if fields.get("id") and fields["id"] in self._reserved:  # MariaDB: see new_call_id
            self._reserved.discard(fields["id"])
            self.update_call(fields["id"], row)
            return fields["id"]
        call_id = fields.get("id") or (self._next_spool_id() if self._spooling else None)
        columns = ", ".join(["id", *row])
        if call_id or self.dialect == "mysql":
            marks = ", ".join("?" * (len(row) + 1))
            cursor = self.conn.execute(f"INSERT INTO calls ({columns}) VALUES ({marks})", (call_id, *row.values()))
            return call_id or cursor.lastrowid  # MariaDB: NULL takes the AUTO_INCREMENT id
        # new_call_id() inside the INSERT: one statement less while the write lock is held.
        values = ", ".join(["MAX(COALESCE(MAX(id), 0) + 1, ?)", *"?" * len(row)])
        cursor = self.conn.execute(f"INSERT INTO calls ({columns}) SELECT {values} FROM calls",
                                   (int(self.clock() * 1000), *row.values()))
        return cursor.lastrowid

    def update_call(self, call_id: int, changes: Mapping[str, Any]) -> None:
        if not changes:
            return
        row = {k: changes[k] for k in CALL_FIELDS if k in changes}
        if isinstance(row.get("dst_numbers"), (list, tuple)):
            row["dst_numbers"] = json.dumps(list(row["dst_numbers"]))
        assignments = ", ".join(f"{k} = ?" for k in row)
        self.conn.execute(f"UPDATE calls SET {assignments} WHERE id = ?", (*row.values(), call_id))

    def _locking(self) -> str:
        """MariaDB, in a transaction: the call read is locked until it ends, so that two
        hooks of one call (on two nodes) take turns."""
        return " FOR UPDATE" if self.dialect == "mysql" and self.conn.in_transaction else ""

    def call(self, call_id: int) -> Optional[Dict[str, Any]]:
        row = self.conn.execute("SELECT * FROM calls WHERE id = ?" + self._locking(), (call_id,)).fetchone()
        return call_from_row(row)

    def call_by_linkedid(self, pbx: str, linkedid: str) -> Optional[Dict[str, Any]]:
        row = self.conn.execute("SELECT * FROM calls WHERE pbx = ? AND linkedid = ?" + self._locking(),
                                (pbx, linkedid)).fetchone()
        return call_from_row(row)

    def open_calls(self, pbx: Optional[str] = None, from_id: int = 0) -> List[Dict[str, Any]]:
        """Calls not ended (ONLINE to the API), oldest first: those of ``pbx`` (None: of
        every PBX) with an id of at least ``from_id`` (a range of the primary key, so a
        caller that knows where the open calls start does not scan the whole table).

        MariaDB: ``from_id`` is not used.  Its index finds the open calls directly, and
        ids there are not given in the order their transactions end (nor are a spool's
        merged in that order), so a call below ``from_id`` may still be new."""
        if self.dialect == "mysql":
            rows = self.conn.execute(
                "SELECT * FROM calls WHERE ended_at IS NULL AND (? IS NULL OR pbx = ?) ORDER BY id",
                (pbx, pbx)).fetchall()
        else:
            rows = self.conn.execute(
                "SELECT * FROM calls WHERE id >= ? AND ended_at IS NULL AND (? IS NULL OR pbx = ?) ORDER BY id",
                (from_id, pbx, pbx)).fetchall()
        return [call_from_row(row) for row in rows]

    def highest_call_id(self) -> int:
        """The largest id given so far (0 for an empty store); ids only grow."""
        (highest,) = self.conn.execute("SELECT COALESCE(MAX(id), 0) FROM calls").fetchone()
        return highest

    # --- the shared store: what it is, and the spool -------------------------------------

    def schema_version(self) -> int:
        if self.dialect == "mysql":
            return mysql_schema_version(self.conn)
        return self.conn.execute("PRAGMA user_version").fetchone()[0]

    @property
    def spool_marker(self) -> str:
        return (self.spool_path or "") + ".pending"

    def spool_pending(self) -> bool:
        """Calls may wait in the spool (a marker file: cheap enough for every hook)."""
        return bool(self.spool_path) and os.path.exists(self.spool_marker)

    def merge_spool(self, limit: Optional[int] = None) -> int:
        """Move what the spool holds into the shared store: its calls (ids kept: they are of
        the spool's own range) and their events, in the order they were written (new ids
        in the shared outbox, delivered ones as delivered, so that a later hook does not
        queue them again).  How many calls moved.

        The spool's write lock is held throughout, so no hook spools meanwhile; the marker
        is removed under it once the spool is empty (a hook that spools re-creates it in
        its own transaction).  A call with an event whose push is under way (leased by a
        live process) waits for a later merge.  If this process dies between the shared
        store's commit and the spool's, the next merge finds the calls and events there
        already and skips them (same ids, same (call, event) pairs): nothing is doubled."""
        if self._mysql is None or self._spooling or not self.spool_pending():
            return 0
        spool = Store(self.spool_path, busy_timeout_s=max(1.0, self._busy_timeout_s))
        moved = 0
        try:
            with spool.transaction() as local:
                at_most = f" LIMIT {int(limit)}" if limit else ""
                calls = local.execute(f"SELECT * FROM calls ORDER BY id{at_most}").fetchall()
                ready, events = [], {}
                now = self.clock()
                for call in calls:
                    rows = local.execute("SELECT * FROM outbox WHERE call_id = ? ORDER BY id", (call["id"],)).fetchall()
                    if all(lease_is_free_row(r, now) for r in rows if r["delivered_at"] is None):
                        ready.append(call)
                        events[call["id"]] = rows
                if ready:
                    with self.transaction() as shared:
                        for call in ready:
                            row = {k: call[k] for k in CALL_FIELDS}
                            columns = ", ".join(["id", *row])
                            shared.execute(f"INSERT IGNORE INTO calls ({columns}) VALUES "
                                           f"({', '.join('?' * (len(row) + 1))})", (call["id"], *row.values()))
                            for e in events[call["id"]]:
                                shared.execute(
                                    "INSERT IGNORE INTO outbox (call_id, request_type, payload, created_at, attempts,"
                                    " next_attempt_at, last_error, delivered_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                    (e["call_id"], e["request_type"], e["payload"], e["created_at"], e["attempts"],
                                     e["next_attempt_at"], e["last_error"], e["delivered_at"]))
                    for call in ready:
                        local.execute("DELETE FROM outbox WHERE call_id = ?", (call["id"],))
                        local.execute("DELETE FROM calls WHERE id = ?", (call["id"],))
                    moved = len(ready)
                (left,) = local.execute("SELECT COUNT(*) FROM calls").fetchone()
                if not left:
                    local.execute("DELETE FROM outbox")  # events of no call: nothing to send them for
                    try:
                        os.unlink(self.spool_marker)
                    except FileNotFoundError:
                        pass
        finally:
            spool.close()
        return moved


class _Transaction:
    """:meth:`Store.transaction`: a class rather than a ``contextlib.contextmanager``
    generator, since contextlib costs every hook start-up.  Inside :meth:`Store.group`,
    a savepoint of the group's transaction; else the write lock of this process, then
    the database's own transaction, committed at the end or rolled back on an error."""

    __slots__ = ("store", "conn", "lock", "savepoint")

    def __init__(self, store: Store):
        self.store = store

    def __enter__(self):
        store = self.store
        self.savepoint = store._grouped
        if self.savepoint:
            conn = self.conn = store.conn
            try:
                conn.execute("SAVEPOINT clinica_group")
            except sqlite3.Error as exc:
                raise StoreError(f"call store busy or unwritable: {exc}") from exc
            return conn
        lock = self.lock = store._write_lock
        if not lock.acquire(timeout=max(0.05, store._busy_timeout_s)):
            raise StoreError("call store busy: other writers of this process held it too long")
        try:
            conn = self.conn = store.conn
            if conn is store._mysql:
                conn.begin()
                return conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                if store._spooling:
                    _touch(store.spool_marker)  # in the transaction: see merge_spool
            except (sqlite3.Error, OSError) as exc:
                raise StoreError(f"call store busy or unwritable: {exc}") from exc
        except BaseException:
            lock.release()
            raise
        return conn

    def __exit__(self, kind, error, traceback) -> bool:
        conn = self.conn
        if self.savepoint:
            if kind is not None:
                conn.execute("ROLLBACK TO SAVEPOINT clinica_group")
            conn.execute("RELEASE SAVEPOINT clinica_group")
            return False
        try:
            if conn is self.store._mysql:
                if kind is None:
                    conn.commit()
                else:
                    conn.rollback()
            elif kind is not None:
                conn.execute("ROLLBACK")
            else:
                try:
                    conn.execute("COMMIT")
                except sqlite3.Error as exc:
                    raise StoreError(f"cannot commit to the call store: {exc}") from exc
        finally:
            self.lock.release()
        return False


class _Group(_Transaction):
    """:meth:`Store.group`: a transaction in which the store's own transactions are
    savepoints."""

    __slots__ = ()

    def __enter__(self):
        conn = super().__enter__()
        self.store._grouped = True
        return conn

    def __exit__(self, kind, error, traceback) -> bool:
        self.store._grouped = False
        return super().__exit__(kind, error, traceback)


def _touch(path: str) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))


def call_from_row(row) -> Optional[Dict[str, Any]]:
    if row is None:
        return None
    call = dict(row)
    call["dst_numbers"] = json.loads(call["dst_numbers"] or "[]")
    return call
