"""One AGI session, start to end, the same in script mode (:mod:`.script`) and FastAGI mode
(:mod:`.fastagi`, :mod:`.fastagi_loop`): read the env block, give the hook its stage's
deadline, run the hook, finish with ``CLINICA_STATUS``.

:func:`session_steps` is the session once its env block is read, as steps
(:mod:`.stages`): :func:`run_session` runs them on a blocking channel, the event loop runs
many sessions' steps at once (it reads the env block without blocking, with the same parser).

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
from ..agi.request import AgiRequest, EnvBlockError
from ..deadline import Deadline, DeadlineExceeded
from ..store.database import StoreError
from .stages import FAILED, HookResult, HookServices, drive, finish_steps, hook_steps


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
    deadline = deadline_for(request.stage_and_args[0])
    services, steps = session_steps(request, deadline, open_services)
    return drive(steps, AgiChannel(stream, deadline), services)


def session_steps(request: AgiRequest, deadline: Deadline, open_services: Callable[[], HookServices]):
    """``(services, steps)`` of the session ``request`` opens: its hook's steps, or, when
    ``open_services()`` fails (:class:`SetupFailed`, ``StoreError``), only the report of that
    failure (services None).  The steps return the :class:`HookResult`."""
    try:
        services = open_services()
    except (SetupFailed, StoreError) as exc:
        return None, _failed(deadline, HookResult(request.stage_and_args[0] or "?", FAILED, detail=str(exc)))
    return services, hook_steps(request, services, deadline)


def _failed(deadline: Deadline, result: HookResult):
    yield from finish_steps(deadline, result)
    return result
