"""One AGI session, start to end, the same in script mode (:mod:`.script`) and FastAGI mode
(:mod:`.fastagi`): read the env block, give the hook its stage's deadline, run the hook,
finish with ``CLINICA_STATUS``.

What differs between the two modes is passed in: the deadline of the env block, how a
stage's deadline is counted (from the process's start in script mode, from the env block in
FastAGI mode), and how the services are opened.  Deadlines are immutable values, passed
down: the channel gets the hook's, and :func:`.stages.finish` its own short grace.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (type checkers read it so)
if TYPE_CHECKING:
    from typing import Callable

from ..agi.channel import AgiChannel, ChannelClosed, LineStream
from ..agi.request import EnvBlockError
from ..deadline import Deadline, DeadlineExceeded
from ..store.database import StoreError
from .stages import FAILED, HookResult, HookServices, finish, run_hook


class NoSession(Exception):
    """The peer sent no usable env block (``__cause__`` says how): there is no hook to run
    and no channel to report on."""


class SetupFailed(Exception):
    """What the hook needs could not be set up (its message is the hook's detail); the
    session still ends with ``CLINICA_STATUS=FAILED``."""


def run_session(stream: LineStream, read_by: Deadline, deadline_for: Callable[[str], Deadline],
                open_services: Callable[[], HookServices]) -> HookResult:
    """Read the env block by ``read_by``, then run its stage's hook within
    ``deadline_for(stage)`` with the services ``open_services()`` gives (it may raise
    :class:`SetupFailed` or ``StoreError``).  Raises :class:`NoSession` only."""
    try:
        request = stream.read_request(read_by)
    except (DeadlineExceeded, EnvBlockError, ChannelClosed, OSError) as exc:
        raise NoSession(str(exc)) from exc
    stage = request.stage_and_args[0]
    deadline = deadline_for(stage)
    channel = AgiChannel(stream, deadline)
    try:
        services = open_services()
    except (SetupFailed, StoreError) as exc:
        result = HookResult(stage or "?", FAILED, detail=str(exc))
        finish(channel, deadline, result)
        return result
    return run_hook(request, channel, services, deadline)
