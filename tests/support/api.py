"""What the API tests share: settings, signing like the CRM, real PHP, a real server."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping

import pytest
from .settings import make_settings
from . import player
from .fake_asterisk import freepbx_calls

from clinica_asterisk.api.server import ApiServer
from clinica_asterisk.api.signature import sign
from .net import free_port

KEY, SECRET = "701151-a3a9ca8", "s3cret-of-the-clinic"
OTHER_KEY, OTHER_SECRET = "second-crm", "another/secret"
PHP_CLIENT = Path(__file__).resolve().parent.parent / "php" / "binotel_client.php"

CALLS = freepbx_calls()  # the recorded FreePBX calls, by scenario
T0 = 1795738000.0
# Seconds after the previous hook at which each hook of a call runs.
STEPS = {"ring-in": 0, "predial-ringall": 1, "predial-one": 1, "predial-trunk": 1, "answer": 5, "hangup": 30}

requires_php = pytest.mark.skipif(
    shutil.which("php") is None,
    reason="php-cli is not installed: the reference signatures come from real PHP (apt-get install php-cli)")




def api_settings(tmp_path, **overrides):
    values = dict(api_keys=f"{KEY}:{SECRET},{OTHER_KEY}:{OTHER_SECRET}",
                  recordings_dir=str(tmp_path / "monitor"), api_bind=f"127.0.0.1:{free_port()}")
    values.update(overrides)
    return make_settings(tmp_path / "data", **values)


def signed_body(params: Mapping[str, Any], key: str = KEY, secret: str = SECRET) -> Dict[str, Any]:
    body = dict(params)
    body["signature"] = sign(secret, params)
    body["key"] = key
    return body


def post(client, path: str, params: Mapping[str, Any], key: str = KEY, secret: str = SECRET):
    """POST a signed request through a Flask test client: (HTTP status, decoded answer)."""
    response = client.post(path, data=json.dumps(signed_body(params, key, secret)),
                           content_type="application/json")
    return response.status_code, json.loads(response.data)


def php(*args: str, stdin: str = "") -> str:
    done = subprocess.run(["php", str(PHP_CLIENT), *args], input=stdin.encode("utf-8"),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60, check=True)
    return done.stdout.decode("utf-8")


def php_verifies(answer_text: str, secret: str = SECRET) -> str:
    """'ok' when Binotel's PHP client accepts the answer's signature."""
    return php("verify", secret, stdin=answer_text).strip()


def php_reads(answer_text: str) -> Dict[str, Any]:
    """What Binotel's samples (and CRMs written like them) find in an answer, read by real
    PHP with every warning fatal."""
    return json.loads(php("read", stdin=answer_text))


@contextlib.contextmanager
def running_server(settings, context=None) -> Iterator[ApiServer]:
    server = ApiServer(settings, context)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def base_url(server: ApiServer, prefix: str = "/api/2.0") -> str:
    host, port = server.address
    return f"http://{host}:{port}{prefix}"


class Clock:
    """A clock the test moves."""

    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now


def play(services, clock, sessions, gap_s=60):
    """One recorded call through the hooks, the clock moving between hooks; its call id."""
    clock.now += gap_s

    def tick(session):
        clock.now += STEPS[session.extra["hook"]]

    played = player.play(sessions, player.InProcess(services), before=tick)
    return next((p.result.call_id for p in played if p.result.call_id), None)
