"""The call store: one SQLite database in the data directory.

WAL mode lets many AGI processes and the services read and write at once; every write is a
short ``BEGIN IMMEDIATE`` transaction with a bounded busy timeout, so a locked database
costs a hook at most its deadline.  ``synchronous=NORMAL`` keeps every committed
transaction across a crash or SIGKILL of any process (it can lose the last ones only on a
power failure of the host).

Tables: ``calls`` (the facts of each call, read by the API) and ``outbox`` (push events
not yet delivered, see :mod:`outbox`).  The schema is versioned (``PRAGMA user_version``):
:data:`SCHEMA` is version 1, each entry of :data:`MIGRATIONS` takes it one version further,
and opening a store brings it to :data:`SCHEMA_VERSION` under the write lock.
"""

from __future__ import annotations

import collections
import json
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Mapping, Optional


SCHEMA = """
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

CREATE TABLE IF NOT EXISTS outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,  -- delivery order
    call_id         INTEGER NOT NULL,
    request_type    TEXT NOT NULL,
    payload         TEXT NOT NULL,          -- JSON of the form fields
    created_at      REAL NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    lease_owner     TEXT,
    lease_until     REAL,
    last_error      TEXT,
    delivered_at    REAL,
    UNIQUE (call_id, request_type)
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (call_id, id) WHERE delivered_at IS NULL;
"""

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

CALL_FIELDS = (
    "pbx", "linkedid", "direction", "origin", "started_at", "src_number", "external_number",
    "did", "internal_number", "dst_numbers", "answered_by", "answered_at", "ended_at",
    "billsec", "disposition", "recording_file", "trunk", "transferred_to", "transfers",
    "pending_transfer", "pre_answered",
)


class StoreError(RuntimeError):
    """The database could not be opened or written."""


# A call id is a positive SQLite INTEGER (a signed 64-bit number).
MAX_CALL_ID = 2 ** 63 - 1


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


class FairLock:
    """A re-entrant lock handed over in the order it was asked for, so that no writer
    waits for many others that came after it (the tail of the hooks' hold time)."""

    def __init__(self):
        self._mutex = threading.Lock()
        self._waiters: "collections.deque[threading.Lock]" = collections.deque()
        self._owner: Optional[int] = None
        self._depth = 0

    def acquire(self, timeout: float = -1) -> bool:
        me = threading.get_ident()
        with self._mutex:
            if self._owner == me:
                self._depth += 1
                return True
            if self._owner is None and not self._waiters:
                self._owner, self._depth = me, 1
                return True
            turn = threading.Lock()
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
_WRITE_LOCKS_GUARD = threading.Lock()


def _write_lock(path: str) -> FairLock:
    """One lock per database file and process.  Threads of one process (the FastAGI
    server's workers) queue on it instead of on SQLite's busy handler, which sleeps in
    steps of up to 100 ms and so lets the lock sit idle while writers wait."""
    with _WRITE_LOCKS_GUARD:
        return _WRITE_LOCKS.setdefault(os.path.realpath(path), FairLock())


class Store:
    """Calls and their facts.  One instance per thread (SQLite connections are not shared)."""

    def __init__(self, path: str, busy_timeout_s: float = 2.0, clock=time.time):
        self.path = path
        self.conn = connect(path, busy_timeout_s)
        self.clock = clock
        self._busy_timeout_s = busy_timeout_s
        self._write_lock = _write_lock(path)

    def close(self) -> None:
        self.conn.close()

    def set_busy_timeout(self, seconds: float) -> None:
        self._busy_timeout_s = seconds
        self.conn.execute(f"PRAGMA busy_timeout={max(1, int(seconds * 1000))}")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that takes the write lock at once (no upgrade deadlocks)."""
        if not self._write_lock.acquire(timeout=max(0.05, self._busy_timeout_s)):
            raise StoreError("call store busy: other writers of this process held it too long")
        try:
            try:
                self.conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreError(f"call store busy or unwritable: {exc}") from exc
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            try:
                self.conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StoreError(f"cannot commit to the call store: {exc}") from exc
        finally:
            self._write_lock.release()

    def write(self, sql: str, params=()) -> int:
        """One write statement as a transaction of its own; how many rows it changed.

        Cheaper than :meth:`transaction` for a single statement: one call into SQLite,
        so the write lock is held for the shortest time."""
        if not self._write_lock.acquire(timeout=max(0.05, self._busy_timeout_s)):
            raise StoreError("call store busy: other writers of this process held it too long")
        try:
            return self.conn.execute(sql, params).rowcount
        except sqlite3.Error as exc:
            raise StoreError(f"call store busy or unwritable: {exc}") from exc
        finally:
            self._write_lock.release()

    # --- calls ---------------------------------------------------------------------

    def new_call_id(self) -> int:
        """A positive int64, larger than any id this store ever gave and than the clock in
        milliseconds, so ids stay unique across restarts and even after the store is
        recreated.  Call inside :meth:`transaction` (the write lock serialises writers)."""
        (highest,) = self.conn.execute("SELECT COALESCE(MAX(id), 0) FROM calls").fetchone()
        return max(highest + 1, int(self.clock() * 1000))

    def insert_call(self, fields: Mapping[str, Any]) -> int:
        row = {k: fields[k] for k in CALL_FIELDS if k in fields}
        if isinstance(row.get("dst_numbers"), (list, tuple)):
            row["dst_numbers"] = json.dumps(list(row["dst_numbers"]))
        columns = ", ".join(["id", *row])
        if fields.get("id"):
            marks = ", ".join("?" * (len(row) + 1))
            self.conn.execute(f"INSERT INTO calls ({columns}) VALUES ({marks})", (fields["id"], *row.values()))
            return fields["id"]
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

    def call(self, call_id: int) -> Optional[Dict[str, Any]]:
        row = self.conn.execute("SELECT * FROM calls WHERE id = ?", (call_id,)).fetchone()
        return call_from_row(row)

    def call_by_linkedid(self, pbx: str, linkedid: str) -> Optional[Dict[str, Any]]:
        row = self.conn.execute("SELECT * FROM calls WHERE pbx = ? AND linkedid = ?", (pbx, linkedid)).fetchone()
        return call_from_row(row)

    def open_calls(self, pbx: Optional[str] = None, from_id: int = 0) -> List[Dict[str, Any]]:
        """Calls not ended (ONLINE to the API), oldest first: those of ``pbx`` (None: of
        every PBX) with an id of at least ``from_id`` (a range of the primary key, so a
        caller that knows where the open calls start does not scan the whole table)."""
        rows = self.conn.execute(
            "SELECT * FROM calls WHERE id >= ? AND ended_at IS NULL AND (? IS NULL OR pbx = ?) ORDER BY id",
            (from_id, pbx, pbx)).fetchall()
        return [call_from_row(row) for row in rows]

    def highest_call_id(self) -> int:
        """The largest id given so far (0 for an empty store); ids only grow."""
        (highest,) = self.conn.execute("SELECT COALESCE(MAX(id), 0) FROM calls").fetchone()
        return highest


def call_from_row(row: Optional[sqlite3.Row]) -> Optional[Dict[str, Any]]:
    if row is None:
        return None
    call = dict(row)
    call["dst_numbers"] = json.loads(call["dst_numbers"] or "[]")
    return call
