"""A stand-in for Asterisk's side of AGI, built from the sessions recorded on a real
Asterisk 22 (``tests/fixtures``).

How Asterisk answers commands lives in the package (:mod:`clinica_asterisk.devtools.asterisk_peer`,
which ``clinica-asterisk simulate`` uses too); this module loads the recordings and runs
scripts and socket pairs against it.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
from pathlib import Path
from typing import Dict, List, Optional

from clinica_asterisk.devtools.asterisk_peer import (  # noqa: F401  (re-exported for the tests)
    AsteriskCall,
    Conversation,
    RecordedSession,
    serve_session,
    session_from_recording,
    split_command,
)

# The recordings live in the repository, so a bare clone runs the tests on its own.
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

ASTERISK22 = FIXTURES / "asterisk22"
FREEPBX = FIXTURES / "freepbx-shaped"

FakeCall = AsteriskCall


def asterisk22_sessions(name: str = "agi-script-sessions.jsonl") -> List[RecordedSession]:
    return [session_from_recording(json.loads(line)) for line in (ASTERISK22 / name).read_text().splitlines()]


def freepbx_calls() -> Dict[str, List[RecordedSession]]:
    """The FreePBX-shaped hook runs, grouped by scenario, in the order the call met them."""
    calls: Dict[str, List[RecordedSession]] = {}
    for line in (FREEPBX / "hook-points.jsonl").read_text().splitlines():
        data = json.loads(line)
        v = dict(data["vars"])
        env = [
            "agi_request: clinica-agi",
            f"agi_channel: {data['channel']}",
            "agi_language: en",
            f"agi_type: {data['channel'].split('/', 1)[0]}",
            f"agi_uniqueid: {v.get('UNIQUEID') or ''}",
            "agi_version: 22.0.0",
            f"agi_callerid: {v.get('${CALLERID(num)}') or 'unknown'}",
            f"agi_calleridname: {v.get('${CALLERID(name)}') or 'unknown'}",
            "agi_callingpres: 0", "agi_callingani2: 0", "agi_callington: 0", "agi_callingtns: 0",
            "agi_dnid: unknown", "agi_rdnis: unknown",
            f"agi_context: {data['context']}",
            "agi_extension: s", "agi_priority: 1", "agi_enhanced: 0.0", "agi_accountcode: ",
            "agi_threadid: 140000000000000",
        ]
        # The recording dialplan froze the linkedid as REF_ID; ours calls it CLINICA_LINKEDID.
        if v.get("REF_ID") is not None:
            v["CLINICA_LINKEDID"] = v["REF_ID"]
        session = RecordedSession(env, v, dead=data["hook"] == "hangup", label=data["hook"],
                                  extra={"hook": data["hook"], "args": data["args"], "call": data.get("call", "")})
        calls.setdefault(data["scenario"], []).append(session)
    return calls


def run_script(command: List[str], call: FakeCall, session: RecordedSession, env: Dict[str, str],
               timeout_s: float = 15.0) -> Conversation:
    """Run an AGI script as Asterisk does (pipes on stdin/stdout) and play Asterisk's side."""
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    try:
        conv = serve_session(call, session, proc.stdout.fileno(), proc.stdin.fileno(), timeout_s)
        proc.stdin.close()
        proc.wait(timeout_s)
        conv.extra_stderr = proc.stderr.read().decode("utf-8", "replace")
        conv.returncode = proc.returncode
        return conv
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


class SocketPeer:
    """A connected pair of sockets: Asterisk's end served by :func:`serve_session` in a
    thread, the handler's end given to the code under test."""

    def __init__(self, call: FakeCall, session: RecordedSession):
        self.asterisk, self.script = socket.socketpair()
        self.conversation: Optional[Conversation] = None
        self.error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._serve, args=(call, session), daemon=True)
        self._thread.start()

    def _serve(self, call, session):
        try:
            self.conversation = serve_session(call, session, self.asterisk.fileno(), self.asterisk.fileno())
        except BaseException as exc:  # reported by finish()
            self.error = exc

    def finish(self) -> Conversation:
        self.script.close()
        self._thread.join(10)
        self.asterisk.close()
        if self.error:
            raise self.error
        return self.conversation
