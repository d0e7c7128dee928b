"""What the service tells systemd, read from a real Unix datagram socket."""

import os
import socket

import pytest

from clinica_asterisk.cli.systemd_notify import SystemdNotifier


class Clock:
    now = 100.0

    def __call__(self):
        return self.now


@pytest.fixture
def notify_socket(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.setblocking(False)
    yield sock
    sock.close()


def received(sock):
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except BlockingIOError:
            return messages


def test_ready_and_stopping_carry_a_status(notify_socket):
    notifier = SystemdNotifier({"NOTIFY_SOCKET": notify_socket.getsockname()})
    assert notifier.ready("FastAGI on 127.0.0.1:4574")
    assert notifier.stopping("finishing 2 session(s)")
    assert received(notify_socket) == ["READY=1\nSTATUS=FastAGI on 127.0.0.1:4574",
                                       "STOPPING=1\nSTATUS=finishing 2 session(s)"]


def test_watchdog_is_pinged_every_half_period(notify_socket):
    clock = Clock()
    notifier = SystemdNotifier({"NOTIFY_SOCKET": notify_socket.getsockname(), "WATCHDOG_USEC": "10000000"},
                               clock=clock)
    assert notifier.ping_interval_s == 5.0
    assert notifier.ping()
    clock.now += 4.9
    assert not notifier.ping()
    clock.now += 0.1
    assert notifier.ping()
    assert received(notify_socket) == ["WATCHDOG=1", "WATCHDOG=1"]


@pytest.mark.parametrize("environ", [
    {"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "1"},  # meant for another process
    {"WATCHDOG_USEC": "0"},
    {},
])
def test_no_watchdog_pings_when_systemd_did_not_ask_this_process(environ, notify_socket):
    notifier = SystemdNotifier({"NOTIFY_SOCKET": notify_socket.getsockname(), **environ})
    assert not notifier.ping()
    assert received(notify_socket) == []


def test_watchdog_for_this_very_process(notify_socket):
    notifier = SystemdNotifier({"NOTIFY_SOCKET": notify_socket.getsockname(), "WATCHDOG_USEC": "1000000",
                                "WATCHDOG_PID": str(os.getpid())})
    assert notifier.ping()


def test_outside_systemd_nothing_is_sent():
    notifier = SystemdNotifier({})
    assert notifier.address is None
    assert not notifier.ready() and not notifier.ping()


def test_reload_is_announced_with_the_monotonic_time(notify_socket):
    SystemdNotifier({"NOTIFY_SOCKET": notify_socket.getsockname()}).reloading()
    (message,) = received(notify_socket)
    state, stamp = message.split("\n")
    assert state == "RELOADING=1" and stamp.startswith("MONOTONIC_USEC=") and stamp[15:].isdigit()


def test_abstract_socket_names_are_understood():
    assert SystemdNotifier({"NOTIFY_SOCKET": "@/org/systemd/notify"}).address == "\0/org/systemd/notify"
