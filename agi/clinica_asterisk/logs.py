"""Logging set-up: one line per hook or event, never on the AGI stream (stdout).

The one place that formats log lines.  Our modules log through :func:`get_logger`, which
forwards to :mod:`logging` as configured by :func:`configure` (``serve``, the worker, the
tests' ``caplog``).  A script hook that hands its events to the delivery worker writes its
line or two itself (:func:`configure_direct`): the same :data:`FORMAT`, the same file,
without loading the ``logging`` package into every ring, answer and hang-up.
"""

from __future__ import annotations

import os
import sys
import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (type checkers read it so)
if TYPE_CHECKING:
    import logging
    from typing import Optional

FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"
DEBUG, INFO, WARNING, ERROR = 10, 20, 30, 40  # logging's levels
_LEVELS = {"DEBUG": DEBUG, "INFO": INFO, "WARNING": WARNING, "ERROR": ERROR}
_NAMES = {DEBUG: "DEBUG", INFO: "INFO", WARNING: "WARNING", ERROR: "ERROR", 50: "CRITICAL"}


def configure(level: str, log_file: str = "", default_file: Optional[str] = None, watched: bool = True) -> None:
    """``log_file`` '-' means stderr (journald under systemd); a path is reopened when
    logrotate moves it (``watched``; a process that lives a moment, the AGI script, does
    without, and without loading ``logging.handlers``).  With neither, ``default_file`` if
    given, else stderr."""
    import logging

    global _direct
    _direct = None
    target = log_file or default_file or "-"
    if target == "-":
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
    else:
        try:
            os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
            if watched:
                from logging.handlers import WatchedFileHandler

                handler = WatchedFileHandler(target, encoding="utf-8")
            else:
                handler = logging.FileHandler(target, encoding="utf-8")
        except OSError:
            handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    # A log that cannot be written (a full disk) loses its lines, and says nothing on
    # stderr: in script mode that is Asterisk's console.
    logging.raiseExceptions = False
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Libraries' chatter (and anything that could echo a URL with credentials) stays quiet.
    logging.getLogger("urllib3").setLevel(logging.WARNING)


class _DirectLog:
    """What :func:`configure` sets up, for a process that logs a line or two through
    :func:`get_logger` alone: lines formatted as ``logging.Formatter(FORMAT)`` does, appended
    to the file as ``logging.FileHandler`` does (stderr when the file cannot be opened),
    errors writing them swallowed (``logging.raiseExceptions = False``)."""

    def __init__(self, level: str, target: str):
        self.level = _LEVELS[level.upper()]
        self.stream = sys.stderr
        if target != "-":
            try:
                os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
                self.stream = open(target, "a", encoding="utf-8")
            except OSError:
                pass

    def emit(self, name: str, level: int, msg: str, args: tuple, exc_info) -> None:
        if level < self.level:
            return
        try:
            created = time.time()
            msecs = int((created - int(created)) * 1000)
            asctime = "%s,%03d" % (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created)), msecs)
            text = FORMAT % {"asctime": asctime, "levelname": _NAMES.get(level, f"Level {level}"), "name": name,
                             "process": os.getpid(), "message": msg % args if args else msg}
            if exc_info:
                text += "\n" + _format_exception(exc_info)
            self.stream.write(text + "\n")
            self.stream.flush()
        except Exception:
            pass


def _format_exception(exc_info) -> str:
    """The traceback as ``logging.Formatter.formatException`` gives it."""
    import traceback

    if not isinstance(exc_info, tuple):
        exc_info = sys.exc_info()
    text = "".join(traceback.format_exception(*exc_info))
    return text[:-1] if text.endswith("\n") else text


_direct: Optional[_DirectLog] = None


def configure_direct(level: str, log_file: str = "", default_file: Optional[str] = None) -> None:
    """As :func:`configure` with ``watched=False``, for the script hook: its own lines (the
    loggers of :func:`get_logger`) are written without the ``logging`` package.  A later
    :func:`configure` hands over to ``logging`` (the hook that sends its events itself
    loads an HTTP client, whose library may log)."""
    global _direct
    _direct = _DirectLog(level, log_file or default_file or "-")


class Logger:
    """``logging.getLogger(name)``'s methods that our modules use, loading ``logging`` at
    the first line logged, unless :func:`configure_direct` writes the lines."""

    __slots__ = ("name", "_logger")

    def __init__(self, name: str):
        self.name = name
        self._logger: Optional[logging.Logger] = None

    @property
    def logger(self) -> logging.Logger:
        if self._logger is None:
            import logging

            self._logger = logging.getLogger(self.name)
        return self._logger

    def log(self, level: int, msg: str, *args, exc_info=None) -> None:
        if _direct is not None:
            _direct.emit(self.name, level, msg, args, exc_info)
        else:
            self.logger.log(level, msg, *args, exc_info=exc_info)

    def debug(self, msg: str, *args, exc_info=None) -> None:
        self.log(DEBUG, msg, *args, exc_info=exc_info)

    def info(self, msg: str, *args, exc_info=None) -> None:
        self.log(INFO, msg, *args, exc_info=exc_info)

    def warning(self, msg: str, *args, exc_info=None) -> None:
        self.log(WARNING, msg, *args, exc_info=exc_info)

    def error(self, msg: str, *args, exc_info=None) -> None:
        self.log(ERROR, msg, *args, exc_info=exc_info)

    def exception(self, msg: str, *args, exc_info=True) -> None:
        self.log(ERROR, msg, *args, exc_info=exc_info)


def get_logger(name: str) -> Logger:
    """The logger our modules log through (see :class:`Logger`)."""
    return Logger(name)
