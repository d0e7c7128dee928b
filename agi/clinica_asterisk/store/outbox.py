"""The durable outbox of push events.

Every event is written here *before* anyone tries to send it; a delivery attempt only
marks it delivered.  So a process killed at any moment loses nothing, and sends again
only the events whose POST it cut, each once.

Order: events of one call go out in the order they were written.  Only the oldest
undelivered event of a call (its *head*) may be sent; a sender first *leases* it, so two
processes never send the same event at once.  A lease covers an attempt to its very end,
also one its hook stopped waiting for (:mod:`.delivery`); it ends when its time is up, or
at once when its owner is a process on this host that no longer exists.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, replace
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from .database import Store

HOST = socket.gethostname()
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


@dataclass(frozen=True)
class OutboxEvent:
    id: int
    call_id: int
    request_type: str
    payload: Dict[str, str]
    attempts: int
    lease_owner: Optional[str]
    lease_until: Optional[float]

    @classmethod
    def from_row(cls, row) -> "OutboxEvent":
        return cls(row["id"], row["call_id"], row["request_type"], json.loads(row["payload"]),
                   row["attempts"], row["lease_owner"], row["lease_until"])


def backoff_s(attempts: int, max_backoff_s: float) -> float:
    """1, 2, 4, … seconds after the 1st, 2nd, 3rd failure; never more than the cap."""
    return float(min(max_backoff_s, 2 ** max(0, min(attempts - 1, 30))))


class Outbox:
    def __init__(self, store: Store):
        self.store = store
        self.conn = store.conn

    def enqueue(self, call_id: int, request_type: str, payload: Mapping[str, str],
                not_before: float = 0.0) -> Optional[int]:
        """Write one event; None if this call already has an event of this type.

        ``not_before``: the delivery worker leaves the event alone until then (a hook that
        is about to send it itself)."""
        cursor = self.conn.execute(
            "INSERT OR IGNORE INTO outbox (call_id, request_type, payload, created_at, next_attempt_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (call_id, request_type, json.dumps(dict(payload), ensure_ascii=False), self.store.clock(), not_before),
        )
        return cursor.lastrowid if cursor.rowcount else None

    def has_event(self, call_id: int, request_type: str) -> bool:
        return self.conn.execute("SELECT 1 FROM outbox WHERE call_id = ? AND request_type = ?",
                                 (call_id, request_type)).fetchone() is not None

    def pending_of_call(self, call_id: int) -> List[OutboxEvent]:
        rows = self.conn.execute(
            "SELECT * FROM outbox WHERE call_id = ? AND delivered_at IS NULL ORDER BY id", (call_id,)
        ).fetchall()
        return [OutboxEvent.from_row(r) for r in rows]

    def heads(self, now: float, limit: int = 100, due_only: bool = True) -> List[OutboxEvent]:
        """The oldest undelivered event of each call, oldest first; leased ones left out."""
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
            row = conn.execute("SELECT * FROM outbox WHERE id = ? AND delivered_at IS NULL", (event.id,)).fetchone()
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

    def lease_pending(self, call_id: int, owner: str, until: float) -> Tuple[List[OutboxEvent], bool]:
        """Lease the call's undelivered events, oldest first, up to the first one that
        someone else holds; and whether that was all of them.  Call it inside a :meth:`Store.transaction` that has just
        written the call's new events: the hook that wrote them takes them in the same
        write, rather than in one more."""
        now = self.store.clock()
        pending = self.pending_of_call(call_id)
        taken = []
        for event in pending:
            if not lease_is_free(event, now):
                break  # a later event must not overtake it
            taken.append(event)
        if taken:
            marks = ",".join("?" * len(taken))
            self.conn.execute(f"UPDATE outbox SET lease_owner = ?, lease_until = ? WHERE id IN ({marks})",
                              (owner, until, *(e.id for e in taken)))
        return [replace(e, lease_owner=owner, lease_until=until) for e in taken], len(taken) == len(pending)

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
            row = conn.execute("SELECT attempts, lease_owner, delivered_at FROM outbox WHERE id = ?",
                               (event_id,)).fetchone()
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
        (due,) = self.conn.execute(
            "SELECT MIN(MAX(next_attempt_at, COALESCE(lease_until, 0))) FROM outbox WHERE delivered_at IS NULL").fetchone()
        return due

    def purge_delivered(self) -> int:
        with self.store.transaction() as conn:
            cursor = conn.execute("DELETE FROM outbox WHERE delivered_at IS NOT NULL AND delivered_at < ?",
                                  (self.store.clock() - KEEP_DELIVERED_S,))
        return cursor.rowcount


def lease_is_free(event: OutboxEvent, now: float) -> bool:
    if event.lease_owner is None:
        return True
    if event.lease_until is not None and event.lease_until < now:
        return True
    return owner_is_gone(event.lease_owner)
