"""A point in time that every blocking step of a hook must finish by."""

from __future__ import annotations

import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (type checkers read it so)
if TYPE_CHECKING:
    from typing import Optional

# The time budgets of a hook and of the pushes it makes; here, beside the deadlines they
# are cut from, so that a hook that hands its events over need not import the sender.
# Time kept back from a hook's deadline for the last AGI command (the status variable).
RESERVE_S = 0.1
# How long after its limit a cut attempt may take to notice (the caller waits that more).
CUT_GRACE_S = 1.0
# A lease outlives the attempt it covers by this much (clock skew, slow commit).
LEASE_MARGIN_S = 5.0


class DeadlineExceeded(Exception):
    """The hook ran out of time; what is left is done later (the outbox)."""


class Deadline:
    """``seconds`` from ``started`` (on ``clock``; default: now).  Immutable: a step that
    must end sooner gets a new Deadline of its own, never a changed one."""

    __slots__ = ("_clock", "started", "at")

    def __init__(self, seconds: float, clock=time.monotonic, started: Optional[float] = None):
        set_ = object.__setattr__
        set_(self, "_clock", clock)
        set_(self, "started", clock() if started is None else started)
        set_(self, "at", self.started + seconds)

    def __setattr__(self, name, value):
        raise AttributeError(f"a Deadline is immutable (cannot set {name})")

    def __delattr__(self, name):
        raise AttributeError(f"a Deadline is immutable (cannot delete {name})")

    def __repr__(self) -> str:
        return f"Deadline(remaining={self.remaining():.3f}s)"

    def remaining(self) -> float:
        return max(0.0, self.at - self._clock())

    def expired(self) -> bool:
        return self._clock() >= self.at

    def elapsed_ms(self) -> int:
        return int((self._clock() - self.started) * 1000)

    def check(self, what: str) -> float:
        left = self.remaining()
        if left <= 0:
            raise DeadlineExceeded(what)
        return left
