import os
import socket
import sys

import pytest

from clinica_asterisk.devtools.crm_sink import CrmSink

sys.path.insert(0, os.path.dirname(__file__))

from support.settings import make_settings  # noqa: E402,F401  (fixtures below use it)


@pytest.fixture
def pair():
    """A connected socket pair: Asterisk's end and the hook's end of an AGI session."""
    asterisk, script = socket.socketpair()
    yield asterisk, script
    asterisk.close()
    script.close()


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
    from support.net import free_port

    return f"http://127.0.0.1:{free_port()}/api/Binotel/Push"


@pytest.fixture
def settings_for(tmp_path):
    def factory(url, **overrides):
        return make_settings(tmp_path / "data", crm_push_url=url, **overrides)

    return factory


def require_mariadbd(what: str = "the FreePBX database tests") -> None:
    """Skip the test without mariadbd, except under CI, where that is a failure."""
    from support.mariadb import find_program

    if not (find_program("mariadbd") and find_program("mariadb-install-db")):
        message = "mariadbd is not installed (apt-get install mariadb-server)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}: CI must run {what}")
        pytest.skip(message)


@pytest.fixture(scope="session")
def mariadb(tmp_path_factory):
    """A real MariaDB server with FreePBX's tables, for the whole run.  Without mariadbd the
    tests that need it are skipped, except under CI, where that is a failure."""
    from support.mariadb import MariaDb

    require_mariadbd()
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


@pytest.fixture
def shared_store_url(mariadb):
    """A shared call store of its own (an empty database and the user of docs/install.md)
    on the run's MariaDB: its URL, password included."""
    import uuid

    return mariadb.create_store(f"clinica_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def private_mariadb(tmp_path):
    """A MariaDB server of the test's own, to restart or kill."""
    from support.mariadb import MariaDb

    require_mariadbd("the shared store's fault tests")
    base = tmp_path / "mdb"
    base.mkdir()
    server = MariaDb(base).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def env_file(tmp_path, monkeypatch):
    """An env file (0600) as the only source of settings: no CLINICA_* in the environment
    but CLINICA_ENV_FILE naming it; the working directory is ``tmp_path``."""
    for key in [k for k in os.environ if k.startswith("CLINICA_")]:
        monkeypatch.delenv(key)
    path = tmp_path / "clinica.env"
    path.write_text("CLINICA_COMPANY_ID=3041\nCLINICA_CRM_PUSH_URL='https://crm.example/api/Binotel/Push'\n")
    path.chmod(0o600)
    monkeypatch.setenv("CLINICA_ENV_FILE", str(path))
    monkeypatch.chdir(tmp_path)
    return path
