"""Running hooks the way Asterisk does, for the tests."""

from __future__ import annotations

from typing import List

from .fake_asterisk import FakeCall, RecordedSession, SocketPeer

from clinica_asterisk.agi.channel import AgiChannel, LineStream
from clinica_asterisk.deadline import Deadline
from clinica_asterisk.hooks.stages import HookServices, run_hook


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


def play_freepbx_call(services: HookServices, sessions: List[RecordedSession]):
    call = FakeCall()
    results = []
    for session in sessions:
        result, _ = run_over_socket(services, call, session.with_args(our_args(session)))
        results.append(result)
    return results, call
