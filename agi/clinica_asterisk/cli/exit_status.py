"""The exit codes of ``clinica-asterisk``: one table for ``main`` and every subcommand."""

import enum


class ExitStatus(enum.IntEnum):
    OK = 0
    ERROR = 1
    CONFIG = 2
    PENDING = 3  # deliver: events still wait (the CRM did not take them)
    INTERRUPTED = 130
