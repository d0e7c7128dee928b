"""The durable outbox of push events: its schema, its SQL, and its transaction contract.

Every event is written here *before* anyone tries to send it; a delivery attempt only
marks it delivered.  So a process killed at any moment loses nothing, and sends again
only the events whose POST it cut, each once.

Order: events of one call go out in the order they were written.  Only the oldest
undelivered event of a call (its *head*) may be sent; a sender first *leases* it, so two
processes never send the same event at once.  A lease covers an attempt to its very end,
also one its hook stopped waiting for (:mod:`..delivery`); it ends when its time is up, or
at once when its owner is a process on this host that no longer exists.  An owner is
``host:pid``: a node of a shared store cannot see another host's processes, so a lease
held by a process of another host that died ends when its time is up.

**The transaction contract.**  The outbox has two kinds of operations:

* :meth:`Outbox.enqueue` and :meth:`Outbox.lease_pending` belong to the change of the
  call that causes the events: they must run inside the caller's
  :meth:`Store.transaction`, after it wrote the call, so that the call's facts, its new
  events and the hook's lease on them are one atomic write (a crash leaves all or none;
  on MariaDB the transaction holds the call's row, so the hooks of one call, on any node,
  queue its events one after the other).  Called outside one they raise
  :class:`OutboxContractError`.
* Everything else (:meth:`heads`, :meth:`claim`, :meth:`release`, :meth:`mark_delivered`,
  :meth:`mark_failed`, :meth:`hand_over`, :meth:`backlog`, :meth:`purge_delivered`) is a
  transaction of its own, each atomic on its own: call them outside one.

Claiming on a shared store (several workers on several nodes): :meth:`claim` locks the
event's row with ``SELECT … FOR UPDATE SKIP LOCKED`` (a row another worker is claiming is
skipped, not waited for), checks that it is free and its call's head, and leases it, in
one short transaction that locks that row alone.  :meth:`lease_pending` reads the call's
events ``FOR UPDATE``: a hook waits for a worker that is claiming its call's head rather
than overwrite that lease.  A worker that is the victim of a deadlock or finds the server
gone for a moment writes its lease or outcome again (:meth:`Store.write`).
"""

from __future__ import annotations

import json
import os
import _socket  # socket.gethostname is _socket.gethostname; socket.py costs every hook start-up

from ..values import Value

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (type checkers read it so)
if TYPE_CHECKING:
    from typing import List, Mapping, Optional, Sequence, Tuple

if TYPE_CHECKING:  # the store imports this module for the outbox's schema
    from .database import Store

# Part of the SQLite store's version 1 (see database.SCHEMA); its indexes are partial.
SQLITE_OUTBOX_SCHEMA = """
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

# Part of the MariaDB store's version 1 (database.MYSQL_MIGRATIONS).  No partial index:
# outbox_queue walks the undelivered events in order, outbox_call finds a call's.
MYSQL_OUTBOX_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id              BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    call_id         BIGINT NOT NULL,
    request_type    VARCHAR(64) NOT NULL,
    payload         MEDIUMTEXT NOT NULL,
    created_at      DOUBLE NOT NULL,
    attempts        INT NOT NULL DEFAULT 0,
    next_attempt_at DOUBLE NOT NULL DEFAULT 0,
    lease_owner     VARCHAR(255) NULL,
    lease_until     DOUBLE NULL,
    last_error      TEXT NULL,
    delivered_at    DOUBLE NULL,
    UNIQUE KEY outbox_event (call_id, request_type),
    KEY outbox_call (call_id, delivered_at, id),
    KEY outbox_queue (delivered_at, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin
"""

HOST = _socket.gethostname()
# Delivered events are kept this long (for `doctor` and for de-duplication), then purged.
KEEP_DELIVERED_S = 7 * 86400


def lease_owner() -> str:
    return f"{HOST}:{os.getpid()}"


def owner_is_gone(owner: Optional[str]) -> bool:
    """True when ``owner`` names a process of this host that has died."""
    if not owner:
        return True
    host, _, pid = owner.rpartition(":")
    if host != HOST or not (pid.isascii() and pid.isdigit()):
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class OutboxEvent(Value):
    # int, int, str, Dict[str, str], int, Optional[str], Optional[float]
    __slots__ = ("id", "call_id", "request_type", "payload", "attempts", "lease_owner", "lease_until")

    @classmethod
    def from_row(cls, row) -> "OutboxEvent":
        return cls(row["id"], row["call_id"], row["request_type"], json.loads(row["payload"]),
                   row["attempts"], row["lease_owner"], row["lease_until"])


class OutboxContractError(RuntimeError):
    """An outbox operation that belongs in the caller's transaction was called outside one."""


def backoff_s(attempts: int, max_backoff_s: float) -> float:
    """1, 2, 4, … seconds after the 1st, 2nd, 3rd failure; never more than the cap."""
    return float(min(max_backoff_s, 2 ** max(0, min(attempts - 1, 30))))


class Outbox:
    """The outbox of ``store`` (see the module's docstring for which operations belong in
    the caller's transaction)."""

    def __init__(self, store: "Store"):
        self.store = store

    @property
    def conn(self):
        return self.store.conn  # a shared store's hook may write to its spool instead

    @property
    def _mysql(self) -> bool:
        return self.store.dialect == "mysql"

    def _in_transaction(self, what: str) -> None:
        if not self.store.in_transaction:
            raise OutboxContractError(f"Outbox.{what} must run inside Store.transaction(), with the write "
                                      "of the call that causes the events")

    def enqueue(self, call_id: int, request_type: str, payload: Mapping[str, str],
                not_before: float = 0.0) -> Optional[int]:
        """Write one event; None if this call already has an event of this type.  Inside
        the caller's transaction only.

        ``not_before``: the delivery worker leaves the event alone until then (a hook that
        is about to send it itself)."""
        self._in_transaction("enqueue")
        ignore = "INSERT IGNORE" if self._mysql else "INSERT OR IGNORE"
        cursor = self.conn.execute(
            ignore + " INTO outbox (call_id, request_type, payload, created_at, next_attempt_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (call_id, request_type, json.dumps(dict(payload), ensure_ascii=False), self.store.clock(), not_before),
        )
        return cursor.lastrowid if cursor.rowcount else None

    def pending_of_call(self, call_id: int, lock: bool = False) -> List[OutboxEvent]:
        rows = self.conn.execute(
            "SELECT * FROM outbox WHERE call_id = ? AND delivered_at IS NULL ORDER BY id"
            + (" FOR UPDATE" if lock and self._mysql else ""), (call_id,)
        ).fetchall()
        return [OutboxEvent.from_row(r) for r in rows]

    def heads(self, now: float, limit: int = 100, due_only: bool = True) -> List[OutboxEvent]:
        """The oldest undelivered event of each call, oldest first; leased ones left out.
        On a shared store, the local spool is merged into it first (the worker's every
        pass)."""
        if self.store.spool_pending() and not self.store.spooling:
            self.store.merge_spool()
        if self._mysql:
            # Leases of other hosts' live processes are left out in SQL, so that a page of
            # heads is not filled with events other workers are sending.
            rows = self.conn.execute(
                """SELECT o.* FROM outbox o
                   WHERE o.delivered_at IS NULL
                     AND NOT EXISTS (SELECT 1 FROM outbox p
                                     WHERE p.call_id = o.call_id AND p.delivered_at IS NULL AND p.id < o.id)
                     AND (? = 0 OR o.next_attempt_at <= ?)
                     AND (o.lease_owner IS NULL OR o.lease_until < ? OR o.lease_owner LIKE ?)
                   ORDER BY o.id LIMIT ?""",
                (1 if due_only else 0, now, now, f"{_like_escaped(HOST)}:%", limit),
            ).fetchall()
            return [e for e in map(OutboxEvent.from_row, rows) if lease_is_free(e, now)]
        rows = self.conn.execute(
            """SELECT o.* FROM outbox o
               WHERE o.delivered_at IS NULL
                 AND o.id = (SELECT MIN(p.id) FROM outbox p WHERE p.call_id = o.call_id AND p.delivered_at IS NULL)
                 AND (? = 0 OR o.next_attempt_at <= ?)
               ORDER BY o.id LIMIT ?""",
            (1 if due_only else 0, now, limit),
        ).fetchall()
        events = [OutboxEvent.from_row(r) for r in rows]
        return [e for e in events if lease_is_free(e, now)]

    def claim(self, event: OutboxEvent, owner: str, until: float) -> bool:
        """Lease ``event`` if it is still the call's head and nobody else holds it."""
        now = self.store.clock()
        if self._mysql:
            return self._claim_shared(event, owner, until, now)
        # The usual case in one statement: a head that nobody holds, or whose lease ran out.
        if self.store.write(
                """UPDATE outbox SET lease_owner = ?, lease_until = ?
                   WHERE id = ? AND delivered_at IS NULL AND (lease_owner IS NULL OR lease_until < ?)
                     AND NOT EXISTS (SELECT 1 FROM outbox p
                                     WHERE p.call_id = ? AND p.delivered_at IS NULL AND p.id < ?)""",
                (owner, until, event.id, now, event.call_id, event.id)):
            return True
        # Held by someone: free after all if its owner died (a check SQL cannot make).
        with self.store.transaction() as conn:
            # A shared store: a row another worker is claiming right now is skipped, not
            # waited for; it is theirs.
            skip = " FOR UPDATE SKIP LOCKED" if self._mysql else ""
            row = conn.execute("SELECT * FROM outbox WHERE id = ? AND delivered_at IS NULL" + skip,
                               (event.id,)).fetchone()
            if row is None:
                return False
            current = OutboxEvent.from_row(row)
            if not lease_is_free(current, now):
                return False
            earlier = conn.execute(
                "SELECT 1 FROM outbox WHERE call_id = ? AND delivered_at IS NULL AND id < ?",
                (event.call_id, event.id)).fetchone()
            if earlier:
                return False
            conn.execute("UPDATE outbox SET lease_owner = ?, lease_until = ? WHERE id = ?", (owner, until, event.id))
        return True

    def _claim_shared(self, event: OutboxEvent, owner: str, until: float, now: float) -> bool:
        """On MariaDB: the event's row locked with ``FOR UPDATE SKIP LOCKED`` (a row another
        worker is claiming is skipped, not waited for: it is theirs), checked and leased in
        one short transaction that locks that row alone.  (One UPDATE with a subquery on
        the outbox, as on SQLite, would lock the call's other rows as well, and deadlock
        with a worker marking one of them delivered.)  Whether an earlier event of the call
        waits is a plain read: ids of a call's events grow in the order their hooks
        committed, and a delivered event stays delivered."""
        with self.store.transaction() as conn:
            row = conn.execute("SELECT * FROM outbox WHERE id = ? AND delivered_at IS NULL FOR UPDATE SKIP LOCKED",
                               (event.id,)).fetchone()
            if row is None or not lease_is_free(OutboxEvent.from_row(row), now):
                return False
            if conn.execute("SELECT 1 FROM outbox WHERE call_id = ? AND delivered_at IS NULL AND id < ? LIMIT 1",
                            (event.call_id, event.id)).fetchone():
                return False
            conn.execute("UPDATE outbox SET lease_owner = ?, lease_until = ? WHERE id = ?", (owner, until, event.id))
        return True

    def lease_pending(self, call_id: int, owner: str, until: float) -> Tuple[List[OutboxEvent], bool]:
        """Lease the call's undelivered events, oldest first, up to the first one that
        someone else holds; and whether that was all of them.  Inside the
        :meth:`Store.transaction` that has just written the call's new events only: the
        hook that wrote them takes them in the same write, rather than in one more."""
        self._in_transaction("lease_pending")
        now = self.store.clock()
        pending = self.pending_of_call(call_id, lock=True)
        taken = []
        for event in pending:
            if not lease_is_free(event, now):
                break  # a later event must not overtake it
            taken.append(event)
        if taken:
            marks = ",".join("?" * len(taken))
            self.conn.execute(f"UPDATE outbox SET lease_owner = ?, lease_until = ? WHERE id IN ({marks})",
                              (owner, until, *(e.id for e in taken)))
        return [e.replace(lease_owner=owner, lease_until=until) for e in taken], len(taken) == len(pending)

    def release(self, event_ids: Sequence[int], owner: str) -> None:
        """Give back leases not used (the hook ran out of time, or an earlier event failed)."""
        if event_ids:
            marks = ",".join("?" * len(event_ids))
            self.store.write(f"UPDATE outbox SET lease_owner = NULL, lease_until = NULL"
                             f" WHERE id IN ({marks}) AND lease_owner = ? AND delivered_at IS NULL",
                             (*event_ids, owner))

    def mark_delivered(self, event_id: int) -> None:
        self.store.write(
            "UPDATE outbox SET delivered_at = ?, attempts = attempts + 1, lease_owner = NULL, lease_until = NULL, last_error = NULL WHERE id = ?",
            (self.store.clock(), event_id))

    def mark_failed(self, event_id: int, error: str, max_backoff_s: float, owners: Sequence[str] = ()) -> bool:
        """The attempt failed: due again after the backoff.  With ``owners``, only while one
        of them holds the lease (an outcome that comes late must not undo what another
        sender did since); False when nothing was changed."""
        now = self.store.clock()
        with self.store.transaction() as conn:
            row = conn.execute("SELECT attempts, lease_owner, delivered_at FROM outbox WHERE id = ?"
                               + (" FOR UPDATE" if self._mysql else ""), (event_id,)).fetchone()
            if row is None or row["delivered_at"] is not None:
                return False
            if owners and row["lease_owner"] is not None and row["lease_owner"] not in owners:
                return False
            attempts = row["attempts"] + 1
            conn.execute(
                "UPDATE outbox SET attempts = ?, next_attempt_at = ?, last_error = ?, lease_owner = NULL, lease_until = NULL WHERE id = ?",
                (attempts, now + backoff_s(attempts, max_backoff_s), error[:500], event_id))
        return True

    def hand_over(self, event_id: int, from_owner: str, to_owner: str) -> bool:
        """The lease of an event passes to another owner (the process that carries its
        attempt on); False when ``from_owner`` no longer held it."""
        return bool(self.store.write(
            "UPDATE outbox SET lease_owner = ? WHERE id = ? AND lease_owner = ? AND delivered_at IS NULL",
            (to_owner, event_id, from_owner)))

    def backlog(self) -> Tuple[int, Optional[float]]:
        """How many events wait, and when the oldest of them was written."""
        count, oldest = self.conn.execute(
            "SELECT COUNT(*), MIN(created_at) FROM outbox WHERE delivered_at IS NULL").fetchone()
        return count, oldest

    def next_due_at(self) -> Optional[float]:
        larger = "GREATEST" if self._mysql else "MAX"
        (due,) = self.conn.execute(
            f"SELECT MIN({larger}(next_attempt_at, COALESCE(lease_until, 0))) FROM outbox WHERE delivered_at IS NULL"
        ).fetchone()
        return due

    def purge_delivered(self) -> int:
        with self.store.transaction() as conn:
            cursor = conn.execute("DELETE FROM outbox WHERE delivered_at IS NOT NULL AND delivered_at < ?",
                                  (self.store.clock() - KEEP_DELIVERED_S,))
        return cursor.rowcount


def lease_is_free(event: OutboxEvent, now: float) -> bool:
    return _free(event.lease_owner, event.lease_until, now)


def lease_is_free_row(row, now: float) -> bool:
    return _free(row["lease_owner"], row["lease_until"], now)


def _free(owner: Optional[str], until: Optional[float], now: float) -> bool:
    if owner is None:
        return True
    if until is not None and until < now:
        return True
    return owner_is_gone(owner)


def _like_escaped(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
