"""Script mode: a push that outlives the AGI script.

When the CRM is slower than the hook's deadline, the hook must tell Asterisk and let the
call go on, but the POST under way must not be abandoned: the CRM may act on it after the
script gave up, and a copy sent later would be a duplicate.  A service keeps the POST
going on a thread (:mod:`.sender`); a script cannot, because Asterisk waits for the
script's process to exit before the dialplan goes on.

So the script sends on its main thread, with an alarm at the hook's deadline.  If the
alarm comes first, the script forks there: the parent tells Asterisk ``QUEUED`` and
exits; the child, in a session of its own and away from Asterisk's pipes, carries the
POST on to the end of its time limit (a second alarm cuts it there), then records the
outcome by exec'ing ``python -m clinica_asterisk.delivery.handoff`` (a fresh process: an SQLite
connection must not be used across a fork).  The event's lease passes to the child's
process, so no one else sends the event while its POST may be in flight; should the child
die, the lease frees at once, as for any crash.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Callable, Mapping, Optional, Sequence

from .sender import Attempt, PushSender
from .transport import AttemptTimedOut, Cutoff
from .worker import LateOutcome, record_attempt
from ..store.outbox import HOST, lease_owner

# The alarm comes this much before the time the caller waits, for the hand-over's write.
HANDOFF_S = 0.05


class _Detached(BaseException):
    """In the parent: the attempt goes on in process ``pid``."""

    def __init__(self, pid: int):
        super().__init__(pid)
        self.pid = pid


class _State:
    armed = False  # the parent's alarm forks
    posting = False  # an attempt is under way
    child = False  # this process carries an attempt on
    limit_at = 0.0


_state = _State()


def _on_alarm(signum, frame) -> None:
    if not _state.posting:
        return  # the attempt is over: its outcome is already in hand
    if _state.armed:  # the caller's wait is over, the attempt is not: fork
        _state.armed = False
        pid = os.fork()
        if pid:
            raise _Detached(pid)
        _become_carrier()
        return
    raise AttemptTimedOut("no answer within the push's time limit")  # its hard limit


def _become_carrier() -> None:
    """The child: its own session (the call's hang-up signals are not for it), Asterisk's
    pipes let go (Asterisk must see the script's end), an alarm at the attempt's limit."""
    _state.child = True
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    signal.setitimer(signal.ITIMER_REAL, max(0.01, _state.limit_at - time.monotonic()))


class ForkingSender(PushSender):
    """The script's sender: each attempt on the calling (main) thread; one the caller stops
    waiting for goes on in a child process (see the module's docstring)."""

    def _attempt(self, payload: Mapping[str, str], limit_s: float, wait_s: float,
                 on_late: Optional[Callable[[Attempt], None]]) -> Attempt:
        if not isinstance(on_late, LateOutcome):
            return super()._attempt(payload, limit_s, wait_s, on_late)
        forks = wait_s < limit_s  # else the alarm is the attempt's hard limit
        started = time.monotonic()
        _state.limit_at = started + limit_s
        previous = signal.signal(signal.SIGALRM, _on_alarm)
        result = None
        try:
            try:
                _state.armed, _state.posting = forks, True
                signal.setitimer(signal.ITIMER_REAL, max(0.01, wait_s - HANDOFF_S) if forks else limit_s)
                result = self._post(payload, limit_s, Cutoff(started + limit_s))
            finally:
                _state.posting = False
                _state.armed = False  # an alarm from here on does nothing
                if not _state.child:
                    signal.setitimer(signal.ITIMER_REAL, 0)
        except _Detached as detached:
            on_late.handed_to(f"{HOST}:{detached.pid}")
            return Attempt(False, f"no answer within {wait_s:.1f} s; the push goes on in process {detached.pid} "
                                  f"for up to {limit_s:g} s", int((time.monotonic() - started) * 1000), in_flight=True)
        finally:
            if not _state.child:
                signal.signal(signal.SIGALRM, previous)
                self._attempt_ended()
        if _state.child:
            signal.setitimer(signal.ITIMER_REAL, 0)
            _record_elsewhere(on_late, result)
        return result


def _record_elsewhere(late: LateOutcome, attempt: Attempt) -> None:
    """The child's end: a fresh interpreter writes the outcome.  Never returns."""
    # The parent handed the lease to this process after the fork: this copy cannot know.
    late.owners = (lease_owner(), *late.owners)
    message = json.dumps({"late": late.to_json(), "attempt": {"ok": attempt.ok, "detail": attempt.detail,
                                                              "ms": attempt.ms}})
    try:
        os.closerange(3, 4096)  # the parent's store, log and sockets stay with the parent
        os.execv(sys.executable, [sys.executable, "-m", "clinica_asterisk.delivery.handoff", message])
    finally:
        os._exit(1)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m clinica_asterisk.delivery.handoff <json>``: record a carried-on attempt's outcome."""
    from .. import logs
    from ..config import load_settings
    from ..store.outbox import Outbox
    from ..store.database import Store

    data = json.loads((argv if argv is not None else sys.argv[1:])[0])
    late = LateOutcome.from_json(data["late"])
    attempt = Attempt(bool(data["attempt"]["ok"]), str(data["attempt"]["detail"]), int(data["attempt"]["ms"]))
    try:
        settings = load_settings()
        logs.configure(settings.log_level, settings.log_file,
                       default_file=os.path.join(settings.data_dir, "clinica-agi.log"))
    except Exception:  # the outcome matters more than its log line
        pass
    store = Store(late.db_path, busy_timeout_s=5.0)
    try:
        record_attempt(Outbox(store), late.event, late.owners, attempt, late.max_backoff_s, late=True)
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
