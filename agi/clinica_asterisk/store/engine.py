"""The shared store's engine: MariaDB (or MySQL) through PyMySQL, behind the small part of
the sqlite3 interface the store and the API use.

``CLINICA_STORE_URL`` names it: ``mysql://user:password@host[:port]/database``, with
PyMySQL's TLS options in the query (``?ssl_ca=/etc/…/ca.pem``, ``ssl_cert``, ``ssl_key``,
``ssl_verify_cert=yes|no``, ``ssl_verify_identity=yes|no``), or a local socket
(``mysql://user:password@localhost/database?unix_socket=/run/mysqld/mysqld.sock``).

:class:`MysqlConnection` takes SQL written for SQLite's ``?`` placeholders and returns rows
that read like ``sqlite3.Row`` (by index, by name, ``dict(row)``), so one query serves both
engines where the SQL is the same; each engine's own SQL lives beside the other's in
:mod:`.database` and :mod:`.outbox`.  Every database error becomes :class:`StoreError`
(whose text never holds the password: PyMySQL's messages name the host, not the
credentials).  A connection lost between statements (the server restarted) is opened again
before the next one; a transaction it cut fails, as a locked SQLite store fails a hook.

PyMySQL is imported only when a connection is made: the AGI script in SQLite mode never
pays for it.
"""

from __future__ import annotations

import _thread  # threading.Lock is _thread.allocate_lock; threading costs every hook start-up
import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (type checkers read it so)
if TYPE_CHECKING:
    from typing import Any, Dict, Iterable, Mapping, Optional, Sequence

from ..config import (StoreUrl, StoreUrlError, is_mysql_url, known_store_password, parse_store_url,
                      remember_store_password)

__all__ = ["StoreUrl", "StoreUrlError", "is_mysql_url", "parse_store_url", "StoreError", "StoreUnreachable",
           "StoreBusy", "MysqlConnection", "resolve", "node_number", "translate", "GAVE_UP"]

# Errors after which the connection is of no more use (the server went away, a network cut).
_LOST = {2006, 2013, 2003, 2055, 4031, 1927}
# Errors that mean "busy, try later": a lock wait timed out, a deadlock was broken.
_BUSY = {1205, 1213}


class StoreError(RuntimeError):
    """The database could not be opened or written."""


class StoreUnreachable(StoreError):
    """The shared store's server could not be reached, or the connection was lost."""


class StoreBusy(StoreError):
    """A lock wait ran out, or a deadlock was broken (this statement undone whole)."""


def resolve(location: str) -> StoreUrl:
    """The store at ``location`` with its password: from the URL itself, from the
    configuration this process built, else from the configuration files
    (``CLINICA_STORE_URL``: a process that records the outcome of another's push is
    handed the location only)."""
    target = parse_store_url(location)
    if target.password:
        remember_store_password(target)
        return target
    known = known_store_password(target.location)
    if known is None:
        try:
            from ..config import load_settings

            configured = load_settings().store_url
            if configured and is_mysql_url(configured):
                other = parse_store_url(configured)
                if other.location == target.location:
                    known = other.password
        except Exception:  # no configuration: try without a password
            known = None
    if known:
        target = StoreUrl(target.user, known, target.host, target.port, target.database, target.options)
    return target


def node_number(host: str) -> int:
    """This host's number among the nodes of a shared store (1 … 1023), for the ids of
    calls it stores while the store is out of reach.  Pure."""
    import zlib  # here: only a shared store's spool numbers its calls so

    return zlib.crc32(host.encode("utf-8")) % 1023 + 1


# --- SQL written for SQLite, run on MariaDB --------------------------------------------------

_TRANSLATED: Dict[str, str] = {}


def translate(sql: str) -> str:
    """SQLite's ``?`` placeholders as PyMySQL's ``%s`` (a literal ``%`` doubled), outside
    quoted text.  Pure; cached."""
    done = _TRANSLATED.get(sql)
    if done is not None:
        return done
    out, quote_char = [], ""
    for ch in sql:
        if quote_char:
            out.append("%%" if ch == "%" else ch)
            if ch == quote_char:
                quote_char = ""
        elif ch in ("'", '"', "`"):
            quote_char = ch
            out.append(ch)
        elif ch == "?":
            out.append("%s")
        elif ch == "%":
            out.append("%%")
        else:
            out.append(ch)
    done = "".join(out)
    if len(_TRANSLATED) < 4096:
        _TRANSLATED[sql] = done
    return done


class Row(tuple):
    """A row by index and by name, as ``sqlite3.Row``: ``row[0]``, ``row["id"]``,
    ``dict(row)``, ``row.keys()``."""

    _index: Mapping[str, int] = {}

    def __getitem__(self, key):
        if isinstance(key, str):
            return tuple.__getitem__(self, self._index[key])
        return tuple.__getitem__(self, key)

    def keys(self):
        return list(self._index)


class Cursor:
    """What ``execute`` answers: the rows, ``rowcount``, ``lastrowid`` and ``description``;
    or, from :meth:`MysqlConnection.cursor`, a cursor to ``execute`` on, whose
    ``row_factory = None`` gives plain tuples (as sqlite3's does)."""

    row_factory: Any = Row

    def __init__(self, rows: Sequence[Any] = (), rowcount: int = -1, lastrowid: Optional[int] = None,
                 description=None, connection: "Optional[MysqlConnection]" = None):
        self._rows = list(rows)
        self.rowcount = rowcount
        self.lastrowid = lastrowid
        self.description = description
        self._connection = connection

    def execute(self, sql: str, params: Iterable[Any] = ()) -> "Cursor":
        done = self._connection.execute(sql, params, plain=self.row_factory is None)
        self._rows, self.rowcount, self.lastrowid, self.description = (
            done._rows, done.rowcount, done.lastrowid, done.description)
        return self

    def close(self) -> None:
        self._rows = []

    def fetchone(self) -> Optional[Row]:
        return self._rows.pop(0) if self._rows else None

    def fetchall(self):
        rows, self._rows = self._rows, []
        return rows

    def __iter__(self):
        return iter(self.fetchall())


def _row_type(description) -> type:
    names = [d[0] for d in description]
    return type("Row", (Row,), {"_index": {name: n for n, name in enumerate(names)}, "__slots__": ()})


class MysqlConnection:
    """One PyMySQL connection, autocommit outside :meth:`begin`/:meth:`commit`, READ
    COMMITTED (a worker sees what another committed a moment ago), reopened when lost."""

    dialect = "mysql"

    def __init__(self, target: StoreUrl, timeout_s: float, on_connect=None):
        self.target = target
        self.timeout_s = timeout_s
        self.on_connect = on_connect  # run on each new connection (the schema check)
        self.in_transaction = False
        self._raw = None
        self._lock_wait_s = 0

    # --- the connection ----------------------------------------------------------------

    def connect(self, timeout_s: Optional[float] = None) -> None:
        import pymysql  # only for a shared store: the AGI script on SQLite never loads it
        from pymysql.constants import CLIENT

        self.close()
        limit = max(0.05, timeout_s if timeout_s is not None else self.timeout_s)
        try:
            # The read timeout bounds the server's greeting too: a server that accepts and
            # says nothing must cost no more than the connect's own limit.
            raw = pymysql.connect(charset="utf8mb4", autocommit=True, connect_timeout=limit,
                                  read_timeout=limit, write_timeout=limit,
                                  client_flag=CLIENT.FOUND_ROWS,  # rowcount: rows matched, as SQLite
                                  **self.target.connect_args())
        except pymysql.MySQLError as exc:
            raise StoreUnreachable(f"cannot reach the shared store ({self.target.shown}): {_text(exc)}") from None
        except (OSError, ValueError) as exc:  # a TLS file that cannot be read, say
            raise StoreUnreachable(f"cannot reach the shared store ({self.target.shown}): {exc}") from None
        # Then each statement's: PyMySQL takes them only at connect, and reads these two
        # attributes before every read and write (pymysql/connections.py, 0.9 to 1.1).
        raw._read_timeout = raw._write_timeout = max(1.0, self.timeout_s + 1.0)
        self._raw = raw
        self._lock_wait_s = 0
        try:
            with raw.cursor() as cursor:
                cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
            self.set_lock_wait(self.timeout_s)
            if self.on_connect is not None:
                self.on_connect(self)
        except BaseException:
            self.close()
            raise

    @property
    def connected(self) -> bool:
        return self._raw is not None

    def alive(self) -> bool:
        """The connection is open and the server answers it (one round trip)."""
        if self._raw is None:
            return False
        try:
            self._raw.ping(reconnect=False)
            return True
        except Exception:
            self.close()
            return False

    def reconnect(self, timeout_s: float) -> bool:
        """Open a new connection within ``timeout_s``; whether it worked."""
        try:
            self.connect(timeout_s)
            return True
        except StoreError:
            return False

    def set_lock_wait(self, seconds: float) -> None:
        """How long a statement waits for a row another transaction holds (whole seconds,
        at least 1: MariaDB's unit)."""
        wanted = max(1, int(seconds + 0.999))
        if self._raw is not None and wanted != self._lock_wait_s:
            self.execute(f"SET SESSION innodb_lock_wait_timeout = {wanted}")
            self._lock_wait_s = wanted

    def close(self) -> None:
        raw, self._raw = self._raw, None
        self.in_transaction = False
        if raw is not None:
            try:
                raw.close()
            except Exception:
                pass

    # --- statements --------------------------------------------------------------------

    def cursor(self) -> Cursor:
        return Cursor(connection=self)

    def execute(self, sql: str, params: Iterable[Any] = (), plain: bool = False) -> Cursor:
        import pymysql

        params = tuple(params)
        statement = translate(sql) if params else sql  # without parameters PyMySQL leaves % alone
        for attempt in (1, 2):
            if self._raw is None:
                if self.in_transaction:
                    raise StoreUnreachable("the connection to the shared store was lost in a transaction")
                self.connect()
            try:
                with self._raw.cursor() as cursor:
                    cursor.execute(statement, params or None)
                    rows = []
                    if cursor.description:
                        rows = cursor.fetchall()
                        if not plain:
                            row_type = _row_type(cursor.description)
                            rows = [row_type(r) for r in rows]
                    return Cursor(rows, cursor.rowcount, cursor.lastrowid, cursor.description)
            except pymysql.MySQLError as exc:
                code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
                lost = code in _LOST or isinstance(exc, pymysql.err.InterfaceError)
                if lost:
                    self.close_after_loss()
                    # Lost before a transaction: nothing was done, or the statement is one
                    # the store may repeat (a read, or a write that changes nothing twice).
                    if attempt == 1 and not self.in_transaction:
                        continue
                    self.in_transaction = False
                if lost:
                    raise StoreUnreachable(f"shared store unreachable: {_text(exc)}") from None
                if code in _BUSY:
                    raise StoreBusy(f"shared store busy: {_text(exc)}") from None
                raise StoreError(f"shared store refused the statement: {_text(exc)}") from None
        raise AssertionError("unreachable")

    def close_after_loss(self) -> None:
        in_transaction = self.in_transaction
        self.close()
        self.in_transaction = in_transaction

    def executescript(self, script: str) -> None:
        for statement in [s for s in script.split(";") if s.strip()]:
            self.execute(statement)

    def begin(self) -> None:
        if self._raw is None:
            self.connect()
        self.execute("BEGIN")  # a lost connection is opened again first: nothing to lose yet
        self.in_transaction = True

    def commit(self) -> None:
        try:
            self.execute("COMMIT")
        finally:
            self.in_transaction = False

    def rollback(self) -> None:
        try:
            if self._raw is not None:
                self._raw.rollback()
        except Exception:
            self.close()
        finally:
            self.in_transaction = False


def _text(exc: BaseException) -> str:
    args = getattr(exc, "args", ())
    if len(args) >= 2 and isinstance(args[0], int):
        return f"({args[0]}) {args[1]}"[:300]
    return f"{type(exc).__name__}: {exc}"[:300]


class GaveUpConnecting:
    """When a store last failed to connect, per location: a hook does not wait for a
    server known to be out of reach more often than once a second."""

    def __init__(self, quiet_s: float = 1.0):
        self.quiet_s = quiet_s
        self._failed: Dict[str, float] = {}
        self._lock = _thread.allocate_lock()

    def recently(self, location: str) -> bool:
        with self._lock:
            return time.monotonic() - self._failed.get(location, -1e9) < self.quiet_s

    def failed(self, location: str) -> None:
        with self._lock:
            self._failed[location] = time.monotonic()

    def succeeded(self, location: str) -> None:
        with self._lock:
            self._failed.pop(location, None)


GAVE_UP = GaveUpConnecting()
