"""The one player of recorded calls: a call's hook sessions in order, Asterisk's side
replayed from the recordings, each session reaching the hooks one of three ways —
in this process over a socket pair (:class:`InProcess`), as the ``clinica-agi`` script
(:class:`Script`), or over FastAGI to a server (:class:`OverFastAgi`)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .fake_asterisk import Conversation, FakeCall, RecordedSession, SocketPeer, run_script

from clinica_asterisk.agi.channel import AgiChannel, LineStream
from clinica_asterisk.deadline import Deadline
from clinica_asterisk.devtools.simulation import ARGS, play_session
from clinica_asterisk.hooks.stages import HookResult, HookServices, run_hook

SCRIPT = [os.path.join(os.path.dirname(sys.executable), "clinica-agi")]


# What our dialplan passes at each FreePBX hook point (dialplan/extensions_clinica.conf).
def our_args(session: RecordedSession) -> List[str]:
    hook, args = session.extra["hook"], session.extra["args"]
    if hook == "ring-in":
        return ["ring-in", args[0]]
    if hook == "predial-ringall":
        return ["dial", session.variables.get("NODEST") or ""]
    if hook == "predial-one":
        return ["dial", args[0]]
    if hook == "predial-trunk":
        return ["ring-out", *args]
    if hook == "answer":
        # U(clinica-answer^<ext>^ext) from the extension hook, ^trunk from the trunk hook
        return ["answer", args[0], "ext" if len(args[0]) <= 6 else "trunk"]
    if hook == "hangup":
        return ["hangup", args[0]]
    raise AssertionError(hook)


def args_of(session: RecordedSession) -> List[str]:
    """The AGI arguments of a recorded session: the FreePBX-shaped recordings name their
    hook point; the Asterisk 22 ones are labelled, as :data:`simulation.ARGS` has them."""
    if "hook" in session.extra:
        return our_args(session)
    return list(ARGS[session.label])


@dataclass
class Played:
    status: str  # CLINICA_STATUS as the hook left it (or, over FastAGI, what went wrong)
    conversation: Optional[Conversation] = None
    result: Optional[HookResult] = None  # in this process only


def run_over_socket(services: HookServices, call: FakeCall, session: RecordedSession, deadline_s=None):
    """One hook session over a real socket pair, Asterisk's side replayed."""
    peer = SocketPeer(call, session)
    stream = LineStream(peer.script.fileno(), peer.script.fileno())
    deadline = Deadline(deadline_s or services.settings.hook_deadline_s)
    channel = AgiChannel(stream, deadline)
    request = stream.read_request()
    result = run_hook(request, channel, services, deadline)
    conversation = peer.finish()
    return result, conversation


class InProcess:
    """The hooks of this process (``run_hook``), as FastAGI's workers run them."""

    def __init__(self, services: HookServices):
        self.services = services

    def __call__(self, call: FakeCall, session: RecordedSession) -> Played:
        result, conversation = run_over_socket(self.services, call, session)
        return Played(result.status, conversation, result)


class Script:
    """The ``clinica-agi`` script, started as Asterisk starts it, with ``env``."""

    def __init__(self, env: Dict[str, str], command: Sequence[str] = tuple(SCRIPT)):
        self.env, self.command = env, list(command)

    def __call__(self, call: FakeCall, session: RecordedSession) -> Played:
        conversation = run_script(self.command, call, session, self.env)
        return Played(conversation.local.get("CLINICA_STATUS", ""), conversation)


class OverFastAgi:
    """``AGI(agi://host:port/clinica-agi,…)`` to a running server."""

    def __init__(self, address: Tuple[str, int], timeout_s: float = 30.0):
        self.address, self.timeout_s = address, timeout_s

    def __call__(self, call: FakeCall, session: RecordedSession) -> Played:
        session = session.over_fastagi(*self.address)
        return Played(play_session(self.address, call, session, timeout_s=self.timeout_s)[0])


def play(sessions: Sequence[RecordedSession], hooks: Callable[[FakeCall, RecordedSession], Played],
         call: Optional[FakeCall] = None,
         before: Optional[Callable[[RecordedSession], None]] = None) -> List[Played]:
    """One call: its sessions in order, each with the arguments our dialplan passes there,
    through ``hooks``; ``before`` runs ahead of each session (a test's clock moves)."""
    call = call if call is not None else FakeCall()
    played = []
    for session in sessions:
        if before is not None:
            before(session)
        played.append(hooks(call, session.with_args(args_of(session))))
    return played


def play_freepbx_call(services: HookServices, sessions: List[RecordedSession]):
    """A FreePBX-shaped call through this process's hooks: the hooks' results, the call."""
    call = FakeCall()
    return [p.result for p in play(sessions, InProcess(services), call)], call
