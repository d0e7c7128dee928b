"""A private MariaDB server holding FreePBX's tables, for the tests of the database source.

The server is real (``mariadbd`` from Debian's mariadb-server), started once per test run in
a temporary data directory, listening on 127.0.0.1 on a free port and on a socket of its
own, and stopped at the end.  The tables have FreePBX's names and columns (core's ``users``,
``incoming`` and ``trunks``, User Management's ``userman_users``); the API reads them as the read-only
user docs/api.md tells the administrator to create, with exactly the grants shown there.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import List, Optional
from urllib.parse import quote

import pymysql
from .net import free_port

DOCS = Path(__file__).resolve().parents[2] / "docs" / "api.md"
INSTALL_DOCS = Path(__file__).resolve().parents[2] / "docs" / "install.md"
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin", "/usr/local/sbin",
                               "/usr/local/bin"])
START_TIMEOUT_S = 60

# The read-only user of docs/api.md, and a password that needs %-encoding in a URL.
RO_USER, RO_PASSWORD = "clinica", "r0:p@ss/w%rd"
# FreePBX's own user, as /etc/freepbx.conf names it.
FREEPBX_USER, FREEPBX_PASSWORD = "freepbxuser", "fpbx-Secret-41c7"

SCHEMA = [
    # core: one row per extension (FreePBX 16/17 columns)
    """CREATE TABLE users (
        extension varchar(20) NOT NULL DEFAULT '',
        password varchar(20) DEFAULT NULL,
        name varchar(50) DEFAULT NULL,
        voicemail varchar(50) DEFAULT NULL,
        ringtimer int(3) DEFAULT NULL,
        noanswer varchar(100) DEFAULT NULL,
        recording varchar(50) DEFAULT NULL,
        outboundcid varchar(50) DEFAULT NULL,
        sipname varchar(50) DEFAULT NULL,
        noanswer_cid varchar(20) NOT NULL DEFAULT '',
        busy_cid varchar(20) NOT NULL DEFAULT '',
        chanunavail_cid varchar(20) NOT NULL DEFAULT '',
        noanswer_dest varchar(255) NOT NULL DEFAULT '',
        busy_dest varchar(255) NOT NULL DEFAULT '',
        chanunavail_dest varchar(255) NOT NULL DEFAULT '',
        mohclass varchar(80) DEFAULT 'default',
        KEY extension (extension)
    ) DEFAULT CHARSET=utf8mb4""",
    # User Management (module.xml of userman 16)
    """CREATE TABLE userman_users (
        id int(11) NOT NULL AUTO_INCREMENT,
        auth varchar(150) DEFAULT 'freepbx',
        authid varchar(750) DEFAULT NULL,
        username varchar(150) DEFAULT NULL,
        description varchar(255) DEFAULT NULL,
        password varchar(255) DEFAULT NULL,
        default_extension varchar(45) NOT NULL DEFAULT 'none',
        primary_group int(11) DEFAULT NULL,
        permissions longblob DEFAULT NULL,
        fname varchar(100) DEFAULT NULL,
        lname varchar(100) DEFAULT NULL,
        displayname varchar(200) DEFAULT NULL,
        title varchar(100) DEFAULT NULL,
        company varchar(100) DEFAULT NULL,
        department varchar(100) DEFAULT NULL,
        language varchar(100) DEFAULT NULL,
        timezone varchar(100) DEFAULT NULL,
        dateformat varchar(100) DEFAULT NULL,
        timeformat varchar(100) DEFAULT NULL,
        datetimeformat varchar(100) DEFAULT NULL,
        email text DEFAULT NULL,
        cell varchar(100) DEFAULT NULL,
        work varchar(100) DEFAULT NULL,
        home varchar(100) DEFAULT NULL,
        fax varchar(100) DEFAULT NULL,
        PRIMARY KEY (id),
        UNIQUE KEY username_UNIQUE (username, auth)
    ) DEFAULT CHARSET=utf8mb4""",
    # core: inbound routes; extension is the DID
    """CREATE TABLE incoming (
        cidnum varchar(20) DEFAULT NULL,
        extension varchar(50) NOT NULL,
        destination varchar(50) DEFAULT NULL,
        privacyman tinyint(1) DEFAULT NULL,
        alertinfo varchar(255) DEFAULT NULL,
        ringing varchar(20) DEFAULT NULL,
        fanswer varchar(20) DEFAULT NULL,
        mohclass varchar(80) NOT NULL DEFAULT 'default',
        description varchar(80) DEFAULT NULL,
        grppre varchar(80) DEFAULT NULL,
        delay_answer int(2) DEFAULT NULL,
        pricid varchar(20) DEFAULT NULL,
        pmmaxretries varchar(2) DEFAULT NULL,
        pmminlength varchar(2) DEFAULT NULL,
        reversal varchar(10) DEFAULT NULL,
        rvolume varchar(2) DEFAULT '',
        indication_zone varchar(20) DEFAULT 'default'
    ) DEFAULT CHARSET=utf8mb4""",
    # core: trunks; outcid is the Outbound CallerID the trunk presents
    """CREATE TABLE trunks (
        trunkid int(11) NOT NULL DEFAULT 0,
        tech varchar(20) NOT NULL,
        channelid varchar(190) NOT NULL DEFAULT '',
        name varchar(50) NOT NULL DEFAULT '',
        outcid varchar(255) NOT NULL DEFAULT '',
        keepcid varchar(4) DEFAULT 'off',
        maxchans varchar(6) DEFAULT '',
        failscript varchar(255) NOT NULL DEFAULT '',
        dialoutprefix varchar(255) NOT NULL DEFAULT '',
        usercontext varchar(255) DEFAULT NULL,
        provider varchar(40) DEFAULT NULL,
        disabled varchar(4) DEFAULT 'off',
        `continue` varchar(4) DEFAULT 'off',
        PRIMARY KEY (trunkid, tech, channelid)
    ) DEFAULT CHARSET=utf8mb4""",
]

# What the recorded FreePBX calls meet (tests/test_freepbx_db.py says what each row is for).
ROWS = [
    "INSERT INTO users (extension, password, name, voicemail, ringtimer, recording, outboundcid, sipname) VALUES "
    "('801', '', 'Наталія С.', 'default', 0, '', '', ''), "
    "('802', '', 'Олег', 'default', 0, '', '', ''), "
    "('803', '', 'Реєстратура', 'novm', 0, '', '', ''), "
    "('804', '', 'Каса', 'novm', 0, '', '', ''), "
    "('904', '', 'Стійка', 'novm', 0, '', '', '')",
    "INSERT INTO userman_users (username, password, default_extension, fname, lname, displayname, email) VALUES "
    "('admin', 'x', 'none', NULL, NULL, 'Administrator', 'admin@clinic.example'), "
    "('nstorozhuk', 'x', '801', 'Наталія', 'Сторожук', 'Наталія Сторожук', 'nataliiastorozhuk@medakadem.com'), "
    "('opetrenko', 'x', '802', 'Олег', 'Петренко', '', ''), "
    "('kasa', 'x', '804', NULL, NULL, NULL, 'kasa@clinic.example'), "
    "('gone', 'x', '999', 'Колишній', 'Працівник', NULL, 'gone@clinic.example')",
    "INSERT INTO incoming (cidnum, extension, destination, description) VALUES "
    "('', '+380443334000', 'from-did-direct,801,1', 'Головна лінія'), "
    "('', '0443334001', 'ext-group,600,1', 'Запис до лікаря'), "
    "('0670219425', '0443334001', 'ext-group,600,1', 'Постійний пацієнт'), "
    "('0679999999', '380443334002', 'from-did-direct,803,1', 'Тільки для одного абонента'), "
    "('', '_044333400[34]', 'ext-queues,400,1', 'Філія'), "
    "('', '', 'ext-group,600,1', 'Інші номери')",
    # Trunk 1 presents the main number with a name, trunk 2 a bare number, trunk 3 nothing.
    "INSERT INTO trunks (trunkid, tech, channelid, name, outcid) VALUES "
    "(1, 'pjsip', 'pstn1', 'pstn1', '\"Clinic\" <+380443334000>'), "
    "(2, 'pjsip', 'pstn2', 'pstn2', '0443334001'), "
    "(3, 'pjsip', 'pstn3', 'pstn3', '')",
]


def documented_grants(user: str, host: str) -> List[str]:
    """The GRANT statements docs/api.md shows, for this user and host."""
    grants = [g.strip() for g in re.findall(r"^\s*GRANT SELECT ON .+;$", DOCS.read_text(encoding="utf-8"), re.M)]
    assert len(grants) == 4, "docs/api.md should show the four GRANT statements"
    return [re.sub(r"TO '[^']*'@'[^']*'", f"TO '{user}'@'{host}'", g).rstrip(";") for g in grants]


# The user of the shared call store (docs/install.md), and its password.
STORE_USER, STORE_PASSWORD = "clinica_store", "st0re:p@ss/w%rd"


def documented_store_grants(user: str, host: str, database: str) -> List[str]:
    """The GRANT statement docs/install.md shows for the shared store's user."""
    grants = re.findall(r"^\s*(GRANT [A-Z, ]+ ON clinica\.\* TO '[^']*'@'[^']*');$", INSTALL_DOCS.read_text(encoding="utf-8"),
                        re.M)
    assert len(grants) == 1, "docs/install.md should show one GRANT for the store's user"
    grant = re.sub(r"TO '[^']*'@'[^']*'", f"TO '{user}'@'{host}'", grants[0])
    return [grant.replace("ON clinica.*", f"ON `{database}`.*")]


def find_program(name: str) -> Optional[str]:
    return shutil.which(name, path=SEARCH_PATH)




class MariaDb:
    """A mariadbd of our own in ``base``."""

    def __init__(self, base: Path):
        self.base = base
        self.datadir = base / "data"
        self.socket = str(base / "mariadb.sock")
        self.port = free_port()
        self.log = base / "mariadbd.err"
        self.process: Optional[subprocess.Popen] = None
        self.extra_args: List[str] = []  # more options for mariadbd (TLS, say)

    def with_tls(self) -> Path:
        """Serve TLS with a certificate of a CA made here (for 127.0.0.1); the CA's file."""
        tls = self.base / "tls"
        tls.mkdir(exist_ok=True)

        def openssl(*args: str) -> None:
            subprocess.run(["openssl", *args], cwd=tls, check=True, capture_output=True, timeout=60)

        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=clinica test CA",
                "-keyout", "ca.key", "-out", "ca.pem")
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key",
                "-out", "server.csr")
        (tls / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
        openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "2", "-extfile", "san.cnf", "-out", "server.pem")
        self.extra_args = [f"--ssl-ca={tls / 'ca.pem'}", f"--ssl-cert={tls / 'server.pem'}",
                           f"--ssl-key={tls / 'server.key'}"]
        return tls / "ca.pem"

    def start(self) -> "MariaDb":
        as_root = ["--user=root"] if os.geteuid() == 0 else []
        subprocess.run([find_program("mariadb-install-db"), "--no-defaults", f"--datadir={self.datadir}",
                        "--auth-root-authentication-method=normal", "--skip-test-db", *as_root],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=START_TIMEOUT_S)
        return self.launch()

    def restart(self, kill: bool = False) -> "MariaDb":
        """Stop the server (SIGKILL with ``kill``: a crash) and start it again on the same
        data, port and socket."""
        if kill and self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)
        self.stop()
        return self.launch()

    def launch(self) -> "MariaDb":
        as_root = ["--user=root"] if os.geteuid() == 0 else []
        self.process = subprocess.Popen(
            [find_program("mariadbd"), "--no-defaults", f"--datadir={self.datadir}", f"--socket={self.socket}",
             f"--port={self.port}", "--bind-address=127.0.0.1", "--skip-networking=0", "--skip-log-bin",
             f"--pid-file={self.base / 'mariadbd.pid'}", f"--log-error={self.log}", "--innodb-buffer-pool-size=16M",
             "--character-set-server=utf8mb4", "--collation-server=utf8mb4_general_ci", *self.extra_args, *as_root],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                self.root().close()
                return self
            except pymysql.MySQLError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"mariadbd did not start: {self.log.read_text()[-2000:]}")
                time.sleep(0.05)  # polling a process we started until it answers, with a deadline

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def root(self, database: Optional[str] = None):
        return pymysql.connect(unix_socket=self.socket, user="root", database=database, charset="utf8mb4",
                               autocommit=True, connect_timeout=2)

    def execute(self, *statements: str, database: Optional[str] = "asterisk") -> None:
        conn = self.root(database)
        try:
            with conn.cursor() as cursor:
                for statement in statements:
                    cursor.execute(statement)
        finally:
            conn.close()

    def create_freepbx(self) -> None:
        """FreePBX's database, its own user and the read-only user of the docs (once)."""
        self.execute("CREATE DATABASE asterisk CHARACTER SET utf8mb4", database=None)
        self.execute(*SCHEMA)
        statements = []
        for host in ("127.0.0.1", "localhost"):
            statements += [f"CREATE USER '{RO_USER}'@'{host}' IDENTIFIED BY '{RO_PASSWORD}'",
                           *documented_grants(RO_USER, host),
                           f"CREATE USER '{FREEPBX_USER}'@'{host}' IDENTIFIED BY '{FREEPBX_PASSWORD}'",
                           f"GRANT ALL PRIVILEGES ON asterisk.* TO '{FREEPBX_USER}'@'{host}'"]
        self.execute(*statements, database=None)

    def reset_rows(self) -> None:
        self.execute("DELETE FROM users", "DELETE FROM userman_users", "DELETE FROM incoming", "DELETE FROM trunks",
                     *ROWS)

    def create_store(self, database: str) -> str:
        """An empty database for a shared call store, its user with the grants of
        docs/install.md; the store's URL (the service makes the tables)."""
        statements = [f"CREATE DATABASE `{database}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"]
        for host in ("127.0.0.1", "localhost"):
            statements += [f"CREATE USER IF NOT EXISTS '{STORE_USER}'@'{host}' IDENTIFIED BY '{STORE_PASSWORD}'",
                           *documented_store_grants(STORE_USER, host, database)]
        self.execute(*statements, database=None)
        return self.store_url(database)

    def store_url(self, database: str, port: Optional[int] = None) -> str:
        return (f"mysql://{quote(STORE_USER, safe='')}:{quote(STORE_PASSWORD, safe='')}@127.0.0.1:"
                f"{port or self.port}/{database}")

    def url(self, port: Optional[int] = None, user: str = RO_USER, password: str = RO_PASSWORD) -> str:
        return f"mysql://{quote(user, safe='')}:{quote(password, safe='')}@127.0.0.1:{port or self.port}/asterisk"


class TcpRelay:
    """127.0.0.1:<port> forwarded to another local port, until :meth:`close` (a database
    server that goes away, as its clients see it)."""

    def __init__(self, target_port: int, port: int = 0):
        self.target_port = target_port
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.sockets: List[socket.socket] = []
        self.threads: List[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False
        self._start(self._accept)

    def _start(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        with self._lock:
            self.threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._closed:
                    client.close()
                    server.close()
                    return
                self.sockets += [client, server]
            self._start(self._pump, client, server)
            self._start(self._pump, server, client)

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        try:
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        """Refuse new connections and cut the open ones.  Sockets are shut down first and
        closed only once no thread uses them (a descriptor closed under a thread can be
        reused by anything)."""
        with self._lock:
            self._closed = True
            sockets = list(self.sockets)
        for s in [self.listener, *sockets]:
            try:
                s.shutdown(socket.SHUT_RDWR)  # wakes the accept and the receives
            except OSError:
                pass
        with self._lock:
            threads = list(self.threads)
        for thread in threads:
            thread.join(10)
        for s in [self.listener, *sockets]:
            s.close()
