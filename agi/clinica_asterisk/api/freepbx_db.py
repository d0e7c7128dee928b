"""FreePBX's own database, read-only: its extensions, User Management's users, inbound routes.

Three tables of FreePBX's MariaDB database (``asterisk``) are read, nothing is written:

- ``users`` (core): every extension, with the name given on its Extensions page;
- ``userman_users`` (User Management): people, their ``default_extension``, ``displayname``,
  ``fname``, ``lname`` and ``email``;
- ``incoming`` (core): inbound routes, ``extension`` being the DID, ``cidnum`` the caller
  id and ``description`` the route's name;
- ``trunks`` (core): each trunk's ``outcid``, the number it presents (``trunkNumber``).  A
  user granted only the first three tables (as older instructions said) reads no trunk.

Where the database is (``CLINICA_FREEPBX_DB``): ``auto`` takes the credentials FreePBX
itself uses, from ``/etc/freepbx.conf`` (``CLINICA_FREEPBX_CONF``) when that file exists
and can be read, and reads nothing otherwise; ``off`` reads nothing;
``mysql://user:password@host[:port]/dbname`` names the database (a separate VM with a
read-only user).  As PHP does, the host ``localhost`` means the server's local socket when
one is there.

:class:`FreePbxSource` keeps what was read and reads again at most every
``CLINICA_FREEPBX_REFRESH_S`` seconds, on its own thread: a request is answered from what
is known and never waits for the database, except for the first read, and then no longer
than the connection's time limits.  When the database cannot be read, one warning is
logged (without the password) and the last data read is kept.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, Mapping, Optional, Sequence, Tuple
from urllib.parse import unquote, urlsplit

from .directory import Employee
from .inbound_routes import InboundRoute

log = logging.getLogger("clinica_asterisk.api.freepbx_db")

CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 3.0
DEFAULT_PORT = 3306
# Where MariaDB's local socket is on Debian (FreePBX 17) and on Sangoma Linux / RHEL (FreePBX 16).
LOCAL_SOCKETS = ("/run/mysqld/mysqld.sock", "/var/run/mysqld/mysqld.sock", "/var/lib/mysql/mysql.sock")

USERS_QUERY = "SELECT extension, name FROM users"
USERMAN_QUERY = ("SELECT default_extension, displayname, fname, lname, email FROM userman_users "
                 "WHERE default_extension IS NOT NULL AND default_extension NOT IN ('', 'none') ORDER BY id")
ROUTES_QUERY = "SELECT extension, cidnum, description FROM incoming ORDER BY extension, cidnum"
TRUNKS_QUERY = "SELECT trunkid, outcid FROM trunks"
TABLES = ("users", "userman_users", "incoming", "trunks")
# MariaDB's "no such table" and "SELECT command denied": a table that may be missing.
_OPTIONAL_TABLE_ERRORS = (1146, 1142)


class FreePbxError(Exception):
    """The database could not be found or read; the message holds no password."""


# --- where the database is ---------------------------------------------------------------

@dataclass(frozen=True)
class DbTarget:
    host: str
    port: int
    user: str
    password: str = field(repr=False)
    database: str
    unix_socket: str = ""
    origin: str = ""  # where the credentials came from: the file, or the setting

    def shown(self) -> str:
        """user@host:port/db, never the password."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        where = f"unix:{self.unix_socket}" if self.unix_socket else f"{host}:{self.port}"
        return f"{self.user}@{where}/{self.database}"


_ASSIGNMENT = re.compile(
    r"""^\s*\$amp_conf\s*\[\s*(?P<q>["'])(?P<key>[A-Za-z0-9_]+)(?P=q)\s*\]\s*=\s*"""
    r"""(?:"(?P<dq>(?:[^"\\]|\\.)*)"|'(?P<sq>(?:[^'\\]|\\.)*)'|(?P<bare>[0-9A-Za-z_.\-]+))\s*;""")
_DQ_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "v": "\v", "f": "\f", "e": "\x1b", "\\": "\\", "$": "$", '"': '"'}


def _php_double_quoted(body: str) -> str:
    return re.sub(r"\\(.)", lambda m: _DQ_ESCAPES.get(m.group(1), "\\" + m.group(1)), body)


def _php_single_quoted(body: str) -> str:
    return re.sub(r"\\([\\'])", r"\1", body)


def parse_freepbx_conf(text: str) -> Dict[str, str]:
    """The ``$amp_conf["KEY"] = "value";`` assignments of /etc/freepbx.conf (a PHP file), the
    last one of a key winning as in PHP.  Quotes of either kind, spaces anywhere, bare
    numbers; commented-out lines (``//``, ``#``, ``/* … */``) and anything else are skipped."""
    values: Dict[str, str] = {}
    in_comment = False
    for line in text.splitlines():
        stripped = line.strip()
        if in_comment:
            in_comment = "*/" not in stripped
            continue
        if stripped.startswith("/*"):
            in_comment = "*/" not in stripped[2:]
            continue
        found = _ASSIGNMENT.match(line)
        if not found:
            continue
        if found.group("dq") is not None:
            value = _php_double_quoted(found.group("dq"))
        elif found.group("sq") is not None:
            value = _php_single_quoted(found.group("sq"))
        else:
            value = found.group("bare")
        values[found.group("key")] = value
    return values


def target_from_conf(values: Mapping[str, str], origin: str) -> DbTarget:
    """The database FreePBX's own settings name (raises FreePbxError when they do not)."""
    engine = values.get("AMPDBENGINE", "mysql").strip().lower()
    if engine not in ("mysql", "mariadb", ""):
        raise FreePbxError(f"{origin}: AMPDBENGINE is {engine!r}, not a MySQL/MariaDB database")
    user = values.get("AMPDBUSER", "").strip()
    if not user:
        raise FreePbxError(f"{origin}: no AMPDBUSER")
    port_text = values.get("AMPDBPORT", "").strip()
    port = int(port_text) if port_text.isdigit() and 0 < int(port_text) < 65536 else DEFAULT_PORT
    return DbTarget(host=values.get("AMPDBHOST", "").strip() or "localhost", port=port, user=user,
                    password=values.get("AMPDBPASS", ""), database=values.get("AMPDBNAME", "").strip() or "asterisk",
                    unix_socket=values.get("AMPDBSOCK", "").strip(), origin=origin)


def target_from_url(url: str, origin: str = "CLINICA_FREEPBX_DB") -> DbTarget:
    """``mysql://user:password@host[:port]/dbname`` (validated by the configuration);
    user and password may be %-encoded."""
    parts = urlsplit(url.strip())
    return DbTarget(host=parts.hostname or "localhost", port=parts.port or DEFAULT_PORT,
                    user=unquote(parts.username or ""), password=unquote(parts.password or ""),
                    database=unquote(parts.path.strip("/")), origin=origin)


def resolve_target(setting: str, conf_path: str) -> Tuple[Optional[DbTarget], str]:
    """The database to read, or None and why not.  Raises FreePbxError when FreePBX's file
    is there but names no usable database."""
    if setting == "off":
        return None, "off (CLINICA_FREEPBX_DB=off)"
    if setting != "auto":
        return target_from_url(setting), ""
    if not conf_path or not os.path.exists(conf_path):
        return None, f"auto: no {conf_path or 'FreePBX configuration file'} (not a FreePBX machine?)"
    try:
        with open(conf_path, encoding="utf-8", errors="replace") as f:
            text = f.read(1 << 20)
    except OSError as exc:
        return None, f"auto: {conf_path} cannot be read by this user ({exc.strerror})"
    return target_from_conf(parse_freepbx_conf(text), conf_path), ""


# --- reading -----------------------------------------------------------------------------

@dataclass(frozen=True)
class FreePbxData:
    """One read of the three tables."""

    employees: Mapping[str, Employee]  # every extension of the users table
    routes: Tuple[InboundRoute, ...]
    named_by_userman: int = 0
    trunks: Mapping[str, str] = field(default_factory=dict)  # trunk id -> the number it presents

    def has_extension(self, extension: str) -> bool:
        return extension in self.employees


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", "replace")
    return str(value).strip()


def employees_from_rows(users: Iterable[Sequence], userman: Iterable[Sequence]) -> Tuple[Dict[str, Employee], int]:
    """Name and e-mail per extension: User Management's user whose default extension it is
    (displayname, else first and last name), else the extension's own name; and how many
    extensions a User Management user named."""
    people: Dict[str, Tuple[str, str]] = {}
    for default_extension, displayname, fname, lname, email in userman:
        extension = _text(default_extension)
        if extension and extension not in people:  # the oldest user of an extension wins
            name = _text(displayname) or " ".join(p for p in (_text(fname), _text(lname)) if p)
            people[extension] = (name, _text(email))
    employees: Dict[str, Employee] = {}
    named = 0
    for extension, core_name in users:
        extension = _text(extension)
        if not extension:
            continue
        name, email = people.get(extension, ("", ""))
        named += bool(name)
        employees[extension] = Employee(name or _text(core_name), email)
    return employees, named


def _connect(target: DbTarget, connect_timeout_s: float, read_timeout_s: float):
    import pymysql  # only the API and the doctor need it

    socket_path = target.unix_socket
    if not socket_path and target.host == "localhost":
        socket_path = next((p for p in LOCAL_SOCKETS if os.path.exists(p)), "")
    host = "127.0.0.1" if target.host == "localhost" else target.host
    return pymysql.connect(host=host, port=target.port, user=target.user, password=target.password,
                           database=target.database, unix_socket=socket_path or None, charset="utf8mb4",
                           connect_timeout=connect_timeout_s, read_timeout=read_timeout_s,
                           write_timeout=read_timeout_s, autocommit=True)


def read_freepbx(target: DbTarget, connect_timeout_s: float = CONNECT_TIMEOUT_S,
                 read_timeout_s: float = READ_TIMEOUT_S) -> FreePbxData:
    """One connection, three SELECTs, closed.  Without User Management (no such table) the
    names come from the extensions alone."""
    import pymysql

    try:
        conn = _connect(target, connect_timeout_s, read_timeout_s)
        try:
            with conn.cursor() as cursor:
                cursor.execute(USERS_QUERY)
                users = cursor.fetchall()
                try:
                    cursor.execute(USERMAN_QUERY)
                    userman = cursor.fetchall()
                except pymysql.err.ProgrammingError as exc:
                    if exc.args and exc.args[0] == 1146:  # ER_NO_SUCH_TABLE: User Management not installed
                        userman = ()
                    else:
                        raise
                cursor.execute(ROUTES_QUERY)
                routes = tuple(InboundRoute(_text(did), _text(cid), _text(description))
                               for did, cid, description in cursor.fetchall())
                try:
                    cursor.execute(TRUNKS_QUERY)
                    trunks = trunks_from_rows(cursor.fetchall())
                except (pymysql.err.ProgrammingError, pymysql.err.OperationalError) as exc:
                    if not (exc.args and exc.args[0] in _OPTIONAL_TABLE_ERRORS):
                        raise
                    trunks = {}  # no grant on trunks: trunkNumber from CLINICA_TRUNK_NUMBERS alone
        finally:
            conn.close()
    except (pymysql.MySQLError, OSError, ValueError) as exc:
        raise FreePbxError(_without_password(_describe(exc), target.password)) from None
    employees, named = employees_from_rows(users, userman)
    return FreePbxData(employees, routes, named, trunks)


def trunks_from_rows(rows: Iterable[Sequence]) -> Dict[str, str]:
    """Trunk id -> the number of its Outbound CallerID (``"Clinic" <0443334000>`` ->
    ``0443334000``); trunks without one are left out."""
    from ..calls.phone import digits_of

    trunks: Dict[str, str] = {}
    for trunkid, outcid in rows:
        number = digits_of(_text(outcid))
        if _text(trunkid) and number:
            trunks[_text(trunkid)] = number
    return trunks


def _describe(exc: Exception) -> str:
    if len(exc.args) >= 2 and isinstance(exc.args[0], int):
        return f"({exc.args[0]}) {exc.args[1]}"
    return str(exc) or type(exc).__name__


def _without_password(message: str, password: str) -> str:
    # MariaDB's messages do not carry the password; this is in case one ever does.  (A very
    # short password would mangle the message and protect nothing.)
    return message.replace(password, "***") if len(password) >= 4 else message


# --- the cache the API reads from --------------------------------------------------------

class FreePbxSource:
    """The last data read, read again in the background once ``refresh_s`` has passed."""

    def __init__(self, target: DbTarget, refresh_s: float, connect_timeout_s: float = CONNECT_TIMEOUT_S,
                 read_timeout_s: float = READ_TIMEOUT_S, clock: Callable[[], float] = time.monotonic,
                 reader: Callable[..., FreePbxData] = read_freepbx):
        self.target = target
        self.refresh_s = refresh_s
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        # The first read may make a request wait this long, no longer.
        self.first_wait_s = connect_timeout_s + read_timeout_s + 0.5
        self._clock = clock
        self._reader = reader
        self._lock = threading.Lock()
        self._data: Optional[FreePbxData] = None
        self._attempted_at: Optional[float] = None
        self._failing = False
        self.last_error = ""
        self._idle = threading.Event()
        self._idle.set()

    @property
    def data(self) -> Optional[FreePbxData]:
        """What is known now (None: never read), without asking the database."""
        return self._data

    def current(self) -> Optional[FreePbxData]:
        """What is known; starts a read in the background when it is due.  Before the first
        read has ended this waits for it, at most ``first_wait_s``."""
        self.refresh_in_background()
        if self._data is None and self._attempted_at is not None:
            self._idle.wait(self.first_wait_s)
        return self._data

    def refresh_in_background(self, force: bool = False) -> bool:
        """Start a read unless one runs or the last began less than ``refresh_s`` ago."""
        with self._lock:
            now = self._clock()
            due = force or self._attempted_at is None or now - self._attempted_at >= self.refresh_s
            if not due or not self._idle.is_set():
                return False
            self._attempted_at = now
            self._idle.clear()
        threading.Thread(target=self._refresh, name="clinica-freepbx-db", daemon=True).start()
        return True

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait for a read in progress to end (tests, shutdown)."""
        return self._idle.wait(timeout_s)

    def _refresh(self) -> None:
        try:
            data = self._reader(self.target, self.connect_timeout_s, self.read_timeout_s)
        except FreePbxError as exc:
            self._failed(str(exc))
        except Exception as exc:  # a bug must not leave the source busy forever
            log.exception("freepbx database %s: read failed", self.target.shown())
            self._failed(type(exc).__name__)
        else:
            # The first read and the one after an outage are worth a line; the others not.
            level = logging.INFO if self._failing or self._data is None else logging.DEBUG
            self._data = data
            self.last_error = ""
            log.log(level, "freepbx database %s: %d extensions (%d named in User Management), %d inbound routes%s",
                    self.target.shown(), len(data.employees), data.named_by_userman, len(data.routes),
                    " (reachable again)" if self._failing else "")
            self._failing = False
        finally:
            self._idle.set()

    def _failed(self, reason: str) -> None:
        self.last_error = reason
        if not self._failing:  # one warning per outage, not one per attempt
            kept = ("keeping the data read before" if self._data is not None
                    else "employee names and didName come from the directory file alone")
            log.warning("freepbx database %s (credentials from %s) not read: %s; %s; next try in %g s",
                        self.target.shown(), self.target.origin, reason, kept, self.refresh_s)
        else:
            log.debug("freepbx database %s still not read: %s", self.target.shown(), reason)
        self._failing = True


def source_for(setting: str, conf_path: str, refresh_s: float, **kwargs) -> Optional[FreePbxSource]:
    """The source the settings ask for, or None (off, or auto without FreePBX's file); a
    file that names no database is logged and treated as none."""
    try:
        target, why_not = resolve_target(setting, conf_path)
    except FreePbxError as exc:
        log.warning("freepbx database not used: %s", exc)
        return None
    if target is None:
        log.debug("freepbx database not used: %s", why_not)
        return None
    return FreePbxSource(target, refresh_s, **kwargs)

