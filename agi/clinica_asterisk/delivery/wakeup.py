"""Script mode: a hook hands its events to the delivery worker instead of POSTing them.

The worker (``clinica-asterisk deliver --forever``) listens on a Unix datagram socket in
the data directory, :data:`SOCKET_NAME`.  A hook that finds it listening stores the call
and its events (the durable write, as always), leases nothing, sends the call's id in one
datagram and exits: ``CLINICA_STATUS=QUEUED``.  The worker, woken at once, sends the
call's new events in order (:func:`.worker.deliver_woken`).  The hook so never loads an
HTTP client nor waits for the CRM; what that costs is said in docs/reliability.md.

Where no worker listens (no socket file, or nobody bound to it: ``connect`` fails at
once), the hook sends its events itself, as it always did.  A wake that is lost (the
worker died or restarted between the hook's ``connect`` and its datagram, or its queue of
datagrams is full) loses nothing: the events are in the outbox and the worker's next pass
finds them, after the hook's deadline (``not_before``).

This module imports nothing heavy: a hook that hands off pays for ``socket`` only.
"""

from __future__ import annotations

import os
import select
import _socket  # what socket.socket wraps; socket.py (enum, selectors) costs every hook start-up

SOCKET_NAME = "worker.sock"
# A datagram is a call id in ASCII digits; the worker reads this many at most per wake.
_MAX_DATAGRAMS = 1024


def socket_path(data_dir: str) -> str:
    return os.path.join(data_dir, SOCKET_NAME)


class WorkerLink:
    """The hook's side: a datagram socket connected to a listening worker."""

    def __init__(self, sock: "_socket.socket"):
        self._sock = sock

    @classmethod
    def connect(cls, path: str):
        """A link to the worker listening at ``path``, or None when none listens (no such
        file, nobody bound to it, not allowed, or a path too long for a socket)."""
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.connect(path)
        except OSError:
            sock.close()
            return None
        return cls(sock)

    def wake(self, call_id: int) -> bool:
        """Tell the worker that ``call_id`` has new events; False if it did not get it
        (its next pass then finds them)."""
        try:
            self._sock.send(str(int(call_id)).encode("ascii"))
            return True
        except OSError:
            return False

    def close(self) -> None:
        self._sock.close()


class WakeupListener:
    """The worker's side: bound to the socket path while it runs.  Only one worker
    listens per data directory; a second one finds the path taken and only polls."""

    def __init__(self, sock: "_socket.socket", path: str):
        self._sock = sock
        self.path = path
        self._inode = os.stat(path).st_ino
        self._wake_self = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM)

    @classmethod
    def bind(cls, path: str):
        """Listen at ``path`` (a stale socket file of a dead worker is replaced), or None
        when another worker listens there or the path cannot be bound."""
        for _ in range(2):
            sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM)
            old_umask = os.umask(0o177)  # the socket: 0600, for the hooks' user (the worker's)
            try:
                sock.bind(path)
            except OSError:
                sock.close()
                if not os.path.exists(path):
                    return None  # too long a path, or no such directory
                live = WorkerLink.connect(path)
                if live is not None:
                    live.close()
                    return None  # a live worker has it
                try:
                    os.unlink(path)  # nobody listens: a worker that died left it
                except OSError:
                    return None
                continue
            finally:
                os.umask(old_umask)
            sock.setblocking(False)
            return cls(sock, path)
        return None

    def fileno(self) -> int:
        return self._sock.fileno()

    def wait(self, timeout_s: float):
        """Wait up to ``timeout_s`` for wakes; the call ids they named, in the order of
        their first wake, each once (an empty list: the time is up, or :meth:`interrupt`)."""
        try:
            ready, _, _ = select.select([self._sock], [], [], max(0.0, timeout_s))
        except InterruptedError:
            return []
        ids = {}
        if ready:
            for _ in range(_MAX_DATAGRAMS):
                try:
                    data = self._sock.recv(64)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    break
                if data.isdigit() and len(data) <= 19:
                    ids.setdefault(int(data), None)
        return list(ids)

    def interrupt(self) -> None:
        """End a :meth:`wait` now (from a signal handler: the worker is to stop)."""
        try:
            self._wake_self.sendto(b"", self.path)
        except OSError:
            pass

    def close(self) -> None:
        self._sock.close()
        self._wake_self.close()
        try:
            if os.stat(self.path).st_ino == self._inode:  # still ours, not a newer worker's
                os.unlink(self.path)
        except OSError:
            pass
