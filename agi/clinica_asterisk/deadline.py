"""A point in time that every blocking step of a hook must finish by."""

from __future__ import annotations

import time
from typing import Optional


class DeadlineExceeded(Exception):
    """The hook ran out of time; what is left is done later (the outbox)."""


class Deadline:
    """``seconds`` from ``started`` (on ``clock``; default: now)."""

    def __init__(self, seconds: float, clock=time.monotonic, started: Optional[float] = None):
        self._clock = clock
        self.started = clock() if started is None else started
        self.at = self.started + seconds

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
