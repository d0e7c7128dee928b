"""Logging set-up: one line per hook or event, never on the AGI stream (stdout)."""

from __future__ import annotations

import logging
import os
import sys
from typing import Optional

FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"


def configure(level: str, log_file: str = "", default_file: Optional[str] = None, watched: bool = True) -> None:
    """``log_file`` '-' means stderr (journald under systemd); a path is reopened when
    logrotate moves it (``watched``; a process that lives a moment, the AGI script, does
    without, and without loading ``logging.handlers``).  With neither, ``default_file`` if
    given, else stderr."""
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
