"""A stand-in for Asterisk's side of AGI, built from the sessions recorded on a real
Asterisk 22 (``shared/fixtures``).

It answers commands the way the recordings show Asterisk answering them: variables from
the recorded values, ``200 result=0`` for an unset variable, ``200 result=1 ()`` for an
empty expression, ``510`` for an unknown command, ``511`` for channel commands on a dead
channel; a ``SET VARIABLE __NAME`` is inherited by the call's later sessions (as the
recordings show for ``__CLINICA_TEST``).  Commands are split into arguments the way
Asterisk's parser does (double quotes, backslash escapes).
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

FIXTURES = Path(__file__).resolve().parent.parent.parent / "shared" / "fixtures"
if not FIXTURES.is_dir():  # CI lays shared/ beside the clone, as here
    FIXTURES = Path(os.environ.get("CLINICA_FIXTURES", "../shared/fixtures")).resolve()

ASTERISK22 = FIXTURES / "asterisk22"
FREEPBX = FIXTURES / "freepbx-shaped"

# Both read the same field of the channel.
ALIASES = {"${CDR(linkedid)}": "${CHANNEL(linkedid)}"}


def split_command(line: str) -> List[str]:
    """Arguments of an AGI command line, as Asterisk's parse_args splits them."""
    args, current, quoted, escaped, started = [], [], False, False, False
    for ch in line:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            escaped, started = True, True
        elif ch == '"':
            quoted, started = not quoted, True
        elif ch.isspace() and not quoted:
            if started:
                args.append("".join(current))
                current, started = [], False
        else:
            current.append(ch)
            started = True
    if started:
        args.append("".join(current))
    return args


def parse_answer_value(answer: str) -> Optional[str]:
    """``200 result=1 (x)`` -> 'x'; ``200 result=0`` -> None."""
    if answer.startswith("200 result=1 (") and answer.endswith(")"):
        return answer[len("200 result=1 ("):-1]
    return None


@dataclass
class RecordedSession:
    """One AGI session: its env block, what the channel knew, and how it ended."""

    env: List[str]
    variables: Dict[str, Optional[str]]
    dead: bool = False
    channel_status: str = "200 result=6"
    unsolicited_hangup_after: Optional[int] = None
    label: str = ""
    extra: dict = field(default_factory=dict)

    def with_args(self, args: List[str]) -> "RecordedSession":
        """The same session as if the dialplan had passed ``args`` to the AGI."""
        env = [line for line in self.env if not line.startswith("agi_arg_")]
        env += [f"agi_arg_{n}: {value}" for n, value in enumerate(args, 1)]
        return RecordedSession(env, dict(self.variables), self.dead, self.channel_status,
                               self.unsolicited_hangup_after, self.label, self.extra)

    def env_value(self, key: str) -> str:
        for line in self.env:
            name, _, value = line.partition(": ")
            if name == key:
                return value
        return ""


def asterisk22_sessions(name: str = "agi-script-sessions.jsonl") -> List[RecordedSession]:
    sessions = []
    for line in (ASTERISK22 / name).read_text().splitlines():
        data = json.loads(line)
        variables: Dict[str, Optional[str]] = {}
        channel_status, dead, hangup_after = "200 result=6", False, None
        for n, (command, answer) in enumerate(data["conv"]):
            if command == "<unsolicited>" and answer == "HANGUP":
                hangup_after = n
                continue
            if command.startswith("<"):
                continue
            args = split_command(command)
            if args[:2] == ["GET", "VARIABLE"]:
                variables[args[2]] = parse_answer_value(answer)
            elif args[:3] == ["GET", "FULL", "VARIABLE"]:
                variables[ALIASES.get(args[3], args[3])] = parse_answer_value(answer) or ""
            elif args[:2] == ["CHANNEL", "STATUS"]:
                channel_status, dead = answer, answer.startswith("511")
        label = (data.get("argv") or [""])[0] or data["env"][1].partition(": ")[2]
        sessions.append(RecordedSession(list(data["env"]), variables, dead, channel_status,
                                        hangup_after, label))
    return sessions


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


class FakeCall:
    """Asterisk's answers for the sessions of one call; inherited variables carry over."""

    def __init__(self):
        self.inherited: Dict[str, str] = {}
        self.set_on_channel: List[tuple] = []

    def answer(self, session: RecordedSession, line: str, local: Dict[str, str]) -> str:
        args = split_command(line)
        upper = [a.upper() for a in args[:3]]
        if upper[:2] == ["GET", "VARIABLE"] and len(args) == 3:
            name = args[2]
            value = local.get(name, self.inherited.get(name, session.variables.get(name)))
            return "200 result=0" if value is None else f"200 result=1 ({value})"
        if upper[:3] == ["GET", "FULL", "VARIABLE"] and len(args) in (4, 5):
            expression = ALIASES.get(args[3], args[3])
            if expression in session.variables:
                value = session.variables[expression]
            elif expression.startswith("${") and expression.endswith("}"):
                name = expression[2:-1]
                value = local.get(name, self.inherited.get(name, session.variables.get(name)))
            else:
                value = ""
            return f"200 result=1 ({value or ''})"
        if upper[:2] == ["SET", "VARIABLE"] and len(args) == 4:
            name, value = args[2], args[3]
            self.set_on_channel.append((session.label, name, value))
            bare = name.lstrip("_")
            if name.startswith("_"):
                self.inherited[bare] = value
            local[bare] = value
            return "200 result=1"
        if upper[:1] == ["VERBOSE"] and len(args) in (2, 3):
            return "200 result=1"
        if upper[:2] == ["CHANNEL", "STATUS"]:
            return session.channel_status
        if session.dead and upper[:1] in (["ANSWER"], ["STREAM"], ["WAIT"]):
            return "511 Command Not Permitted on a dead channel or intercept routine"
        return "510 Invalid or unknown command"


@dataclass
class Conversation:
    commands: List[str] = field(default_factory=list)
    answers: List[str] = field(default_factory=list)
    local: Dict[str, str] = field(default_factory=dict)
    closed_by_script: bool = False


def serve_session(call: FakeCall, session: RecordedSession, read_fd: int, write_fd: int,
                  timeout_s: float = 10.0, network: bool = False) -> Conversation:
    """Play Asterisk's side over two file descriptors until the script ends the session."""
    conv = Conversation()
    env = list(session.env)
    os.write(write_fd, ("\n".join(env) + "\n\n").encode("utf-8"))
    buffer = b""
    while True:
        ready = select.select([read_fd], [], [], timeout_s)[0]
        if not ready:
            raise TimeoutError(f"the script stalled after {conv.commands[-3:]}")
        chunk = os.read(read_fd, 65536)
        if not chunk:
            conv.closed_by_script = True
            return conv
        buffer += chunk
        while b"\n" in buffer:
            raw, buffer = buffer.split(b"\n", 1)
            line = raw.decode("utf-8")
            conv.commands.append(line)
            if session.unsolicited_hangup_after is not None and len(conv.commands) - 1 == session.unsolicited_hangup_after:
                os.write(write_fd, b"HANGUP\n")
            answer = call.answer(session, line, conv.local)
            conv.answers.append(answer)
            try:
                os.write(write_fd, (answer + "\n").encode("utf-8"))
            except BrokenPipeError:
                conv.closed_by_script = True
                return conv


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
