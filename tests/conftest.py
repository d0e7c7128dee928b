import os
import sys

import pytest

from clinica_asterisk.config import DEFAULTS, build_settings
from clinica_asterisk.crm_sink import CrmSink

sys.path.insert(0, os.path.dirname(__file__))


def make_settings(data_dir, **overrides):
    values = dict(DEFAULTS)
    values["CLINICA_DATA_DIR"] = str(data_dir)
    values.update({f"CLINICA_{k.upper()}": str(v) for k, v in overrides.items()})
    return build_settings(values)


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
