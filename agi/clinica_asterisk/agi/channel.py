"""The AGI command channel over any pair of streams (stdin/stdout of a script, a FastAGI
socket, a pipe in a test).

pyst2's ``AGI`` formats commands and parses Asterisk's answers; this module wraps it so
that every caller gets the same safe behaviour:

* no SIGHUP handler is installed (``signal.signal`` is refused off the main thread, and a
  hook must finish its bookkeeping even when the caller has hung up);
* every read has a deadline, and lines are bounded, so a stalled or chatty peer cannot
  hold a call;
* pyst2's debug output goes nowhere instead of to Asterisk;
* values written into a command are quoted with CR/LF removed, so no value can inject a
  second command;
* FastAGI's unsolicited ``HANGUP`` line is noted and skipped, never taken for an answer;
* answers are parsed by :func:`agi_reply.parse_reply`, and :meth:`AgiChannel.prefetch`
  reads what a hook needs in one round trip (each round trip is a network delay when the
  FastAGI server runs on another host, and costs both sides CPU).
"""

from __future__ import annotations

import logging
import os
import select
import threading
from typing import Dict, List, Optional, Sequence

from asterisk.agi import AGI, AGIException

from .reply import Reply, as_expression, batch_expression, parse_reply, reply_code, split_batch
from .request import (MAX_ENV_BYTES, MAX_ENV_LINES, MAX_LINE_BYTES, AgiRequest, EnvBlockError,
                          parse_env_block, parse_env_line)
from ..deadline import Deadline, DeadlineExceeded


log = logging.getLogger("clinica_asterisk.agi.channel")
_batch_refused = threading.Event()


class ChannelClosed(EOFError):
    """Asterisk closed the stream."""


class LineTooLong(ChannelClosed):
    """The peer sent a line longer than any Asterisk sends.  It is not buffered whole, and
    what follows it cannot be read as answers: the session is over (every later read or
    write says so)."""


class LineStream:
    """Bounded, deadline-aware line reads and writes over two file descriptors."""

    def __init__(self, read_fd: int, write_fd: int):
        self.read_fd = read_fd
        self.write_fd = write_fd
        self._buffer = bytearray()
        self._broken = ""
        self.deadline: Optional[Deadline] = None

    def _wait(self, fd: int, for_write: bool) -> None:
        # poll, not select: a busy server's descriptors go past select's limit of 1024.
        timeout = self.deadline.check("waiting for Asterisk") if self.deadline else None
        poller = select.poll()
        poller.register(fd, select.POLLOUT if for_write else select.POLLIN)
        if not poller.poll(None if timeout is None else max(1, int(timeout * 1000))):
            raise DeadlineExceeded("waiting for Asterisk")

    def _raw_line(self, limit: int) -> bytes:
        """The next line with its newline.  Never more than ``limit`` + 1 bytes are held for
        it: a longer line breaks the stream (:class:`LineTooLong`)."""
        if self._broken:
            raise LineTooLong(self._broken)
        while True:
            end = self._buffer.find(b"\n", 0, limit + 1)
            if end >= 0:
                line = bytes(self._buffer[:end + 1])
                del self._buffer[: end + 1]
                return line
            if len(self._buffer) > limit:
                self._broken = f"the peer sent a line longer than {limit} bytes"
                self._buffer = bytearray()
                raise LineTooLong(self._broken)
            self._wait(self.read_fd, for_write=False)
            try:
                chunk = os.read(self.read_fd, min(4096, limit + 1 - len(self._buffer)))
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                raise ChannelClosed("Asterisk closed the AGI stream")
            self._buffer += chunk

    def readline(self, limit: int = MAX_LINE_BYTES) -> str:
        """One line, without its end; :class:`LineTooLong` past ``limit`` bytes."""
        return self._raw_line(limit).rstrip(b"\n").rstrip(b"\r").decode("utf-8", "replace")

    def write(self, text: str) -> None:
        if self._broken:
            raise LineTooLong(self._broken)
        data = memoryview(text.encode("utf-8"))
        while data:
            self._wait(self.write_fd, for_write=True)
            try:
                sent = os.write(self.write_fd, data)
            except (BrokenPipeError, ConnectionResetError) as exc:
                raise ChannelClosed("Asterisk closed the AGI stream") from exc
            data = data[sent:]

    def read_request(self) -> AgiRequest:
        """The env block: ``agi_key: value`` lines up to an empty line.  Each line is
        checked as it comes (garbage ends the session at its first line, not at the session
        timeout), and no more than :data:`MAX_ENV_BYTES` are read in all."""
        lines: List[str] = []
        left = MAX_ENV_BYTES
        while True:
            try:
                raw = self._raw_line(min(MAX_LINE_BYTES, left))
            except LineTooLong:
                raise EnvBlockError(f"env block longer than {MAX_ENV_BYTES} bytes, or a line longer "
                                    f"than {MAX_LINE_BYTES}") from None
            left -= len(raw)
            line = raw.rstrip(b"\n").rstrip(b"\r").decode("utf-8", "replace")
            if line == "":
                return AgiRequest(parse_env_block(lines))
            if len(lines) == MAX_ENV_LINES:
                raise EnvBlockError(f"env block longer than {MAX_ENV_LINES} lines")
            parse_env_line(line)
            lines.append(line)


def one_line(value: object) -> str:
    """``value`` as text that cannot end an AGI command line: CR, LF and NUL become spaces."""
    text = str(value)
    for ch in "\r\n\x00":
        text = text.replace(ch, " ")
    return text


def quote_argument(value: object) -> str:
    """One AGI command argument: :func:`one_line`, quotes and backslashes escaped."""
    return '"' + one_line(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


class _Pyst2Writer:
    def __init__(self, stream: LineStream):
        self._stream = stream

    def write(self, text: str) -> None:
        self._stream.write(text)

    def flush(self) -> None:
        pass


class _Discard:
    def write(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass


class AgiChannel(AGI):
    """pyst2's AGI, bound to a :class:`LineStream` and a deadline."""

    def __init__(self, stream: LineStream, deadline: Optional[Deadline] = None):
        # AGI.__init__ is not called on purpose: it installs a SIGHUP handler and reads the
        # env block itself, without limits; :meth:`LineStream.read_request` does that.
        self.stream = stream
        stream.deadline = deadline
        self.hung_up = False
        self._got_sighup = False
        self.env = {}
        self.stdout = _Pyst2Writer(stream)
        self.stderr = _Discard()
        self._values: Dict[str, str] = {}  # by expression, from prefetch() and set()

    def _answer_line(self) -> str:
        while True:
            line = self.stream.readline()
            if line.strip() == "HANGUP":
                # FastAGI: the caller hung up.  Commands may still be answered.
                self.hung_up = True
                continue
            return line

    def get_result(self, stdin=None) -> Reply:
        line = self._answer_line()
        usage: List[str] = []
        if line.startswith("520-"):  # a usage text, up to its closing "520 " line
            while len(usage) < 100 and sum(map(len, usage)) < MAX_LINE_BYTES:
                usage.append(self._answer_line())
                if reply_code(usage[-1]) == 520 and not usage[-1].startswith("520-"):
                    break
        return parse_reply(line, usage)

    def _quote(self, string):
        return quote_argument(string)

    def test_hangup(self):
        # A hang-up must not stop the hook: its bookkeeping still has to be done.
        pass

    # The calls the handlers use: errors of one command do not end the session.
    def prefetch(self, names: Sequence[str]) -> None:
        """Read variables and expressions in one round trip, for :meth:`variable` and
        :meth:`expression` to answer from.  If Asterisk does not answer as expected,
        nothing is kept and they read one by one."""
        wanted = [e for e in dict.fromkeys(map(as_expression, names)) if e not in self._values]
        if len(wanted) < 2:
            return
        try:
            values = split_batch(self.get_full_variable(batch_expression(wanted)), len(wanted))
        except AGIException:
            return
        if values is not None:
            self._values.update(zip(wanted, values))
        elif not _batch_refused.is_set():
            _batch_refused.set()  # once per process: every hook of this PBX would say it
            log.warning("Asterisk did not answer a CSV_QUOTE batch as expected; reading channel "
                        "variables one by one (is func_strings loaded? `module show like func_strings`)")

    def variable(self, name: str) -> str:
        """A channel variable; '' when unset."""
        cached = self._values.get(as_expression(name))
        return cached if cached is not None else self.get_variable(name)

    def expression(self, expression: str) -> str:
        """GET FULL VARIABLE, e.g. ``${CDR(billsec)}``; '' when empty."""
        cached = self._values.get(expression)
        return cached if cached is not None else self.get_full_variable(expression)

    def first_of(self, *expressions: str) -> str:
        """The first non-empty of several expressions (read in order, lazily)."""
        for expression in expressions:
            value = self.expression(expression) if expression.startswith("$") else self.variable(expression)
            if value:
                return value
        return ""

    def set(self, name: str, value: object) -> bool:
        try:
            self.set_variable(name, value)
        except AGIException:
            return False
        self._values[as_expression(name.lstrip("_"))] = one_line(value)  # what the channel now holds
        return True

    def say(self, message: str) -> None:
        """A VERBOSE line on the Asterisk console; never fails the hook."""
        try:
            self.verbose(message, 1)
        except AGIException:
            pass
