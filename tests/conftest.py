import os
import sys

import pytest

from clinica_asterisk.devtools.crm_sink import CrmSink

sys.path.insert(0, os.path.dirname(__file__))

from support.settings import make_settings  # noqa: E402,F401  (fixtures below use it)


@pytest.fixture
def crm():
    sink = CrmSink().start()
    yield sink
    sink.stop()


@pytest.fixture
def hanging_crm():
    sink = CrmSink(behaviour="hang").start()
    yield sink
    sink.stop()


@pytest.fixture
def failing_crm():
    sink = CrmSink(status=500).start()
    yield sink
    sink.stop()


@pytest.fixture
def closed_port_url():
    """A URL on which nothing listens (a CRM that is down)."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/api/Binotel/Push"


@pytest.fixture
def settings_for(tmp_path):
    def factory(url, **overrides):
        return make_settings(tmp_path / "data", crm_push_url=url, **overrides)

    return factory


@pytest.fixture(scope="session")
def mariadb(tmp_path_factory):
    """A real MariaDB server with FreePBX's tables, for the whole run.  Without mariadbd the
    tests that need it are skipped, except under CI, where that is a failure."""
    from support.mariadb import MariaDb, find_program

    if not (find_program("mariadbd") and find_program("mariadb-install-db")):
        message = "mariadbd is not installed (apt-get install mariadb-server)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}: CI must run the FreePBX database tests")
        pytest.skip(message)
    server = MariaDb(tmp_path_factory.mktemp("mariadb")).start()
    try:
        server.create_freepbx()
        yield server
    finally:
        server.stop()


@pytest.fixture
def freepbx_db(mariadb):
    """The server with FreePBX's rows as every test expects them at its start."""
    mariadb.reset_rows()
    return mariadb
