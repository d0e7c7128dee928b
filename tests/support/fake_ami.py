"""A stand-in for Asterisk's manager interface on a real socket (127.0.0.1, a free port).

It speaks the protocol as Asterisk does: the ``Asterisk Call Manager/…`` banner, then
``Key: value`` lines ended by a blank line in both directions.  What it does is chosen by
``behaviour``:

* ``accept``: Login succeeds (and ``FullyBooted`` follows, as on a real PBX); Originate is
  answered ``Response: Success`` / ``Originate successfully queued``, then the
  ``OriginateResponse`` event arrives; CoreShowChannels is answered as Asterisk 22 does:
  ``Channels will follow``, one ``CoreShowChannel`` event per entry of :attr:`channels`,
  then ``CoreShowChannelsComplete`` with ``ListItems``; Logoff says goodbye and closes.
* ``refuse``: as ``accept``, but the Originate and CoreShowChannels are answered
  ``Response: Error`` with ``refusal``.
  ``Hangup`` removes the named channel from :attr:`channels` and says ``Channel Hungup``
  (``No such channel`` for a name it does not have).
* ``bad-login``: Login is answered ``Authentication failed`` and the connection closed.
* ``silent``: accepts the connection and never says anything, not even the banner.
* ``mute-after-login``: greets and logs in, then never answers the Originate or
  CoreShowChannels.
* ``close-after-login``: greets and logs in, then hangs up on the Originate or
  CoreShowChannels.
* ``stall-list``: as ``accept``, but the channel list stops before its last channel and
  ``CoreShowChannelsComplete``; the connection stays open.
* ``cut-list``: as ``stall-list``, but the connection is closed there.

Every action received is kept, headers in the order sent, in :attr:`actions`.
:attr:`channels` (a test may change it between sessions) holds the live channels as
``(channel, uniqueid, linkedid)``.
"""

from __future__ import annotations

import select
import socket
import threading
from typing import List, Optional, Tuple

BANNER = b"Asterisk Call Manager/7.0.3\r\n"

Headers = List[Tuple[str, str]]


def _message(*pairs: Tuple[str, str]) -> bytes:
    return b"".join(f"{k}: {v}\r\n".encode() for k, v in pairs) + b"\r\n"


def header(action: Headers, name: str) -> Optional[str]:
    return next((v for k, v in action if k == name), None)


class FakeAmi:
    def __init__(self, behaviour: str = "accept", username: str = "clinica", secret: str = "ami-secret",
                 refusal: str = "Extension does not exist."):
        self.behaviour = behaviour
        self.username = username
        self.secret = secret
        self.refusal = refusal
        self.actions: List[Headers] = []
        self.channels: List[Tuple[str, str, str]] = []
        self.connections = 0
        self.lock = threading.Lock()
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port = self._listener.getsockname()[1]
        self._open: List[socket.socket] = []
        self._stop = threading.Event()
        self._threads: List[threading.Thread] = []

    def start(self) -> "FakeAmi":
        thread = threading.Thread(target=self._accept_loop, daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        self._listener.close()
        with self.lock:
            for conn in self._open:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                conn.close()
        for thread in list(self._threads):
            thread.join(5)

    def originates(self) -> List[Headers]:
        with self.lock:
            return [a for a in self.actions if header(a, "Action") == "Originate"]

    def hangups(self) -> List[Headers]:
        with self.lock:
            return [a for a in self.actions if header(a, "Action") == "Hangup"]

    def logins(self) -> List[Optional[str]]:
        """The user names of the Logins received."""
        with self.lock:
            return [header(a, "Username") for a in self.actions if header(a, "Action") == "Login"]

    def listings(self) -> List[Headers]:
        with self.lock:
            return [a for a in self.actions if header(a, "Action") == "CoreShowChannels"]

    # --- serving ------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                ready = select.select([self._listener], [], [], 0.05)[0]
                if not ready:
                    continue
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
                self._open.append(conn)
            thread = threading.Thread(target=self._session, args=(conn,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _session(self, conn: socket.socket) -> None:
        try:
            if self.behaviour == "silent":
                self._stop.wait(30)
                return
            conn.sendall(BANNER)
            buffer = b""
            while not self._stop.is_set():
                ready = select.select([conn], [], [], 0.05)[0]
                if not ready:
                    continue
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buffer += chunk
                while b"\r\n\r\n" in buffer:
                    block, buffer = buffer.split(b"\r\n\r\n", 1)
                    action = [tuple(x.strip() for x in line.split(":", 1))
                              for line in block.decode("utf-8", "replace").split("\r\n") if ":" in line]
                    with self.lock:
                        self.actions.append(action)
                    if not self._answer(conn, action):
                        return
        except OSError:
            return
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def _answer(self, conn: socket.socket, action: Headers) -> bool:
        """Reply to one action; False when the connection is to be closed."""
        name, action_id = header(action, "Action"), header(action, "ActionID") or ""
        if name == "Login":
            if self.behaviour == "bad-login" or header(action, "Username") != self.username \
                    or header(action, "Secret") != self.secret:
                conn.sendall(_message(("Response", "Error"), ("ActionID", action_id),
                                      ("Message", "Authentication failed")))
                return False
            conn.sendall(_message(("Response", "Success"), ("ActionID", action_id),
                                  ("Message", "Authentication accepted")))
            conn.sendall(_message(("Event", "FullyBooted"), ("Privilege", "system,all"),
                                  ("Uptime", "4242"), ("Status", "Fully Booted")))
            return True
        if name in ("Originate", "CoreShowChannels"):
            if self.behaviour == "mute-after-login":
                return True
            if self.behaviour == "close-after-login":
                return False
            if self.behaviour == "refuse":
                conn.sendall(_message(("Response", "Error"), ("ActionID", action_id), ("Message", self.refusal)))
                return True
        if name == "CoreShowChannels":
            return self._list_channels(conn, action_id)
        if name == "Originate":
            conn.sendall(_message(("Response", "Success"), ("ActionID", action_id),
                                  ("Message", "Originate successfully queued")))
            conn.sendall(_message(
                ("Event", "OriginateResponse"), ("Privilege", "call,all"), ("ActionID", action_id),
                ("Response", "Success"), ("Channel", (header(action, "Channel") or "") + "-00000004;1"),
                ("Context", header(action, "Context") or ""), ("Exten", header(action, "Exten") or ""),
                ("Application", ""), ("Data", ""), ("Reason", "4"), ("Uniqueid", "1795715147.29"),
                ("CallerIDNum", "<unknown>"), ("CallerIDName", "<unknown>")))
            return True
        if name == "Hangup":
            with self.lock:
                kept = [c for c in self.channels if c[0] != header(action, "Channel")]
                found, self.channels = len(kept) < len(self.channels), kept
            conn.sendall(_message(("Response", "Success" if found else "Error"), ("ActionID", action_id),
                                  ("Message", "Channel Hungup" if found else "No such channel")))
            return True
        if name == "Logoff":
            conn.sendall(_message(("Response", "Goodbye"), ("ActionID", action_id),
                                  ("Message", "Thanks for all the fish.")))
            return False
        conn.sendall(_message(("Response", "Error"), ("ActionID", action_id), ("Message", "Invalid/unknown command")))
        return True

    def _list_channels(self, conn: socket.socket, action_id: str) -> bool:
        with self.lock:
            channels = list(self.channels)
        conn.sendall(_message(("Response", "Success"), ("ActionID", action_id), ("EventList", "start"),
                              ("Message", "Channels will follow")))
        cut = self.behaviour in ("stall-list", "cut-list")
        if cut:
            channels = channels[:-1]
        for name, uniqueid, linkedid in channels:
            conn.sendall(_message(
                ("Event", "CoreShowChannel"), ("ActionID", action_id), ("Channel", name),
                ("ChannelState", "6"), ("ChannelStateDesc", "Up"), ("CallerIDNum", "801"),
                ("CallerIDName", "<unknown>"), ("ConnectedLineNum", "0670219424"),
                ("ConnectedLineName", "<unknown>"), ("Language", "en"), ("AccountCode", ""),
                ("Context", "macro-dial-one"), ("Exten", "s"), ("Priority", "52"), ("Uniqueid", uniqueid),
                ("Linkedid", linkedid), ("BridgeId", ""), ("Application", "Dial"),
                ("ApplicationData", "PJSIP/801/sip:801@10.0.0.5:5060,,HhtrIb(func-apply-sipheaders^s^1)"),
                ("Duration", "00:00:42")))
        if not cut:
            conn.sendall(_message(("Event", "CoreShowChannelsComplete"), ("ActionID", action_id),
                                  ("EventList", "Complete"), ("ListItems", str(len(channels)))))
        return self.behaviour != "cut-list"
