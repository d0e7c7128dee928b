"""Telling systemd how the service is doing (``sd_notify``), with the standard library.

Under ``Type=notify`` systemd passes ``NOTIFY_SOCKET`` (a Unix datagram socket) and, with
``WatchdogSec=``, ``WATCHDOG_USEC``.  The service sends ``READY=1`` once it accepts
calls, ``WATCHDOG=1`` at least every half watchdog period while it is healthy, and
``RELOADING=1`` / ``STOPPING=1`` around a reload or a stop.  If the pings stop (a wedged
accept loop, a stuck worker), systemd kills and restarts the service: a FastAGI server
that is down costs a call nothing, one that accepts and hangs holds it.

Outside systemd (no ``NOTIFY_SOCKET``) every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Mapping, Optional

log = logging.getLogger(__name__)


class SystemdNotifier:
    def __init__(self, environ: Optional[Mapping[str, str]] = None, clock=time.monotonic):
        environ = os.environ if environ is None else environ
        self._clock = clock
        self.address = self._address(environ.get("NOTIFY_SOCKET", ""))
        self.watchdog_s = self._watchdog_period(environ)
        self._last_ping: Optional[float] = None
        self._sock: Optional[socket.socket] = None

    @staticmethod
    def _address(raw: str) -> Optional[str]:
        if raw.startswith("@"):  # an abstract socket
            return "\0" + raw[1:]
        if raw.startswith("/"):
            return raw
        if raw:
            log.warning("NOTIFY_SOCKET %r is not a Unix socket path; not notifying systemd", raw)
        return None

    @staticmethod
    def _watchdog_period(environ: Mapping[str, str]) -> Optional[float]:
        usec, pid = environ.get("WATCHDOG_USEC", ""), environ.get("WATCHDOG_PID", "")
        if not usec.isdigit() or int(usec) == 0:
            return None
        if pid and (not pid.isdigit() or int(pid) != os.getpid()):
            return None  # the watchdog is meant for another process
        return int(usec) / 1e6

    @property
    def ping_interval_s(self) -> Optional[float]:
        """How often to ping: half the watchdog period, as sd_watchdog_enabled(3) advises."""
        return self.watchdog_s / 2 if self.watchdog_s else None

    def notify(self, *states: str) -> bool:
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.setblocking(False)
            self._sock.sendto("\n".join(states).encode("utf-8"), self.address)
            return True
        except OSError as exc:
            log.warning("cannot notify systemd on %s: %s", self.address.lstrip("\0"), exc)
            return False

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> bool:
        # MONOTONIC_USEC lets systemd tell this reload from an earlier one (systemd >= 253).
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self, status: str = "") -> bool:
        return self.notify("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def ping(self) -> bool:
        """``WATCHDOG=1`` if the watchdog is on and half its period has passed."""
        if self.watchdog_s is None:
            return False
        now = self._clock()
        if self._last_ping is not None and now - self._last_ping < self.ping_interval_s:
            return False
        self._last_ping = now
        return self.notify("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
