"""``clinica-agi``: the hook as an AGI script, ``AGI(clinica-agi,<stage>,<args>…)``.

Start-up is kept lean (it runs on every ring, answer and hang-up): heavy modules such as
``requests`` load only when an event is actually sent.  Whatever happens, the script
exits 0 and the dialplan continues.
"""

from __future__ import annotations

import os
import signal
import sys


def main() -> int:
    # Asterisk sends SIGHUP when the caller hangs up; the hook must still finish its
    # bookkeeping (the default action would kill it half-way).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    from .config import ConfigError, load_settings
    from .deadline import Deadline

    try:
        settings = load_settings()
        error = None
    except ConfigError as exc:
        settings, error = None, exc
    deadline_s = settings.hook_deadline_s if settings else 2.0

    from .channel import AgiChannel, LineStream
    from .hooks import FAILED, HookResult, finish

    stream = LineStream(sys.stdin.fileno(), sys.stdout.fileno())
    # Asterisk has written the env block before the script starts; reading it gets its own
    # limit.  The hook's deadline starts after it: on a host so loaded that Python start-up
    # alone eats the deadline, the hook still stores its events (and sends them later)
    # instead of giving up on them.
    stream.deadline = Deadline(deadline_s)
    try:
        request = stream.read_request()
    except Exception as exc:
        sys.stderr.write(f"clinica-agi: no AGI session on stdin ({type(exc).__name__}: {exc})\n")
        return 0
    deadline = Deadline(deadline_s)
    channel = AgiChannel(stream, deadline)

    from . import logs

    if settings is None:
        logs.configure("INFO")
        finish(channel, deadline, HookResult(request.stage_and_args[0] or "?", FAILED,
                                             detail=f"configuration: {error}"))
        return 0
    logs.configure(settings.log_level, settings.log_file,
                   default_file=os.path.join(settings.data_dir, "clinica-agi.log"))

    from .delivery import OneShotTransport
    from .hooks import HookServices, run_hook
    from .store import StoreError

    try:
        services = HookServices.open(settings, transport=OneShotTransport())
    except StoreError as exc:
        finish(channel, deadline, HookResult(request.stage_and_args[0] or "?", FAILED, detail=str(exc)))
        return 0
    run_hook(request, channel, services, deadline)
    return 0


if __name__ == "__main__":
    sys.exit(main())
