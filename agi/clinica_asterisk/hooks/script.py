"""``clinica-agi``: the hook as an AGI script, ``AGI(clinica-agi,<stage>,<args>…)``.

Start-up is kept lean (it runs on every ring, answer and hang-up, and the call waits for
it): when the delivery worker listens, the hook stores its events and hands them over
(:mod:`..delivery.wakeup`), so the HTTP client is never loaded; the settings come from
the parse cache beside the env file rather than from python-dotenv (:mod:`..config`).
Without a worker, the hook posts its events itself.  Whatever happens, the script exits 0
and the dialplan continues; its end is kept lean too (:func:`main`).
"""

from __future__ import annotations

import gc
import os
import _signal  # what signal.signal wraps; signal.py (its enums) costs every hook start-up
import sys
import time

# The fallback for process_started(): as early as this process runs code of ours.
_IMPORTED_AT = time.monotonic()


def start_ticks(stat: str) -> int:
    """The start time (field 22, clock ticks after boot) in a /proc/<pid>/stat line.  The
    command name (field 2) is in parentheses and may hold spaces and parentheses itself."""
    return int(stat[stat.rindex(")") + 2:].split()[19])


def process_started() -> float:
    """When Asterisk started this process (its fork), on the monotonic clock: Python's own
    start-up and the imports are part of the call's wait.  Linux's start time is counted
    on the boot clock, in ticks (10 ms: the deadline may start that much early, never
    late); without /proc, the moment this module was imported."""
    try:
        with open("/proc/self/stat") as f:
            ticks = start_ticks(f.read())
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return _IMPORTED_AT
    now = time.monotonic()
    return now - age if 0 <= age < 3600 else _IMPORTED_AT


# What a hook still gets after a start-up that ate its deadline: enough to read its facts
# and store its events (a few milliseconds on an idle host).
STORE_FLOOR_S = 0.1


def main() -> int:
    try:
        return _hook()
    finally:
        # The process ends next.  Python's finalization would have the collector free, one
        # by one, every function, class and table the imports made: milliseconds of the
        # call's wait, for memory the exit hands back whole.  Frozen, they are left to the
        # exit.  (The store is closed before, by _hook, not left to the collector.)
        gc.freeze()


def _hook() -> int:
    started = process_started()
    # Asterisk sends SIGHUP when the caller hangs up; the hook must still finish its
    # bookkeeping (the default action would kill it half-way).
    _signal.signal(_signal.SIGHUP, _signal.SIG_IGN)
    from ..config import ConfigError, load_settings
    from ..deadline import Deadline

    try:
        settings, error = load_settings(), ""
    except ConfigError as exc:
        settings, error = None, str(exc)
    except Exception as exc:  # a bug reading the settings must not cost the call
        settings, error = None, f"cannot read the settings ({type(exc).__name__})"
    deadline_s = settings.hook_deadline_s if settings else 2.0

    from ..agi.channel import LineStream
    from .session import NoSession, SetupFailed, run_session
    from .stages import QUEUED

    # The deadline is what the call waits: it counts from the process's start, and reading
    # the env block (written by Asterisk before it started us) is part of it.  On a host so
    # loaded that start-up alone ate it, the hook still gets STORE_FLOOR_S to read the facts
    # and store the call's events, which the worker then sends: the call waits that much
    # longer once, and the CRM still hears of the call.
    read_by = Deadline(max(Deadline(deadline_s, started=started).remaining(), STORE_FLOOR_S))

    def deadline_for(stage: str) -> Deadline:
        # Each stage's own deadline (the answer's is short).
        deadline = Deadline(settings.deadline_for(stage) if settings else deadline_s, started=started)
        return deadline if deadline.remaining() >= STORE_FLOOR_S else Deadline(STORE_FLOOR_S)

    worker = []  # the link to the delivery worker, when it takes the events
    opened = []  # the services the session opened

    def open_services():
        from .. import logs

        if settings is None:
            logs.configure("INFO")
            raise SetupFailed(f"configuration: {error}")
        # A plain file, not watched: this process lives a moment (logrotate's move is
        # harmless).  Its line is written without the logging package (logs.configure_direct).
        log_file = settings.log_file
        default_log = os.path.join(settings.data_dir, "clinica-agi.log")
        logs.configure_direct(settings.log_level, log_file, default_file=default_log)

        from ..delivery.wakeup import WorkerLink, socket_path
        from .stages import HookServices

        link = WorkerLink.connect(socket_path(settings.data_dir))
        if link is not None:
            # The delivery worker listens: it sends the events, at once, and this process
            # neither loads an HTTP client nor waits for the CRM (delivery.wakeup).
            worker.append(link)
            services = HookServices.open(settings, sender=link)
            services.hands_off = True
            opened.append(services)
            return services

        # Sending itself, the hook loads an HTTP client, whose library may log: logging proper.
        logs.configure(settings.log_level, log_file, default_file=default_log, watched=False)

        from ..delivery.transport import HttpTransport as OneShotTransport  # the one transport (name kept for hooks/)
        from ..delivery.handoff import ForkingSender

        # A push the CRM is slow to answer goes on in a child process after the hook.
        sender = ForkingSender(settings.crm_push_url, settings.push_format, OneShotTransport())
        services = HookServices.open(settings, sender=sender)
        opened.append(services)
        return services

    try:
        result = run_session(LineStream(sys.stdin.fileno(), sys.stdout.fileno()), read_by, deadline_for,
                             open_services)
    except NoSession as exc:
        cause = exc.__cause__ or exc
        sys.stderr.write(f"clinica-agi: no AGI session on stdin ({type(cause).__name__}: {cause})\n")
        return 0
    if worker and result.status == QUEUED and result.call_id:
        worker[0].wake(result.call_id)  # stored and committed: the worker may send them now
    for services in opened:
        # Closed now: sqlite3 keeps a connection in a reference cycle (its statement cache),
        # which only the collector would free, and main() leaves nothing to the collector.
        services.store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
