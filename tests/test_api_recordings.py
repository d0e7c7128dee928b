"""stats/call-record and the links it gives: expiry, tampering, path tricks, byte ranges."""

import os
import stat
import time
from urllib.parse import parse_qs, urlsplit

import pytest
from support.api import api_settings, post
from support.binotel_shapes import check

from clinica_asterisk.api.app import build_context, create_app
from clinica_asterisk.api.errors import Code
from clinica_asterisk.api.recordings import KEY_FILE, LinkSigner, load_link_key, recording_path
from clinica_asterisk.store.database import Store

STARTED = 1795715093.0  # 2026-11-26 in any time zone near UTC
AUDIO = b"RIFF" + bytes(range(256)) * 40


class Clock:
    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now


def day_dir(root, moment):
    return os.path.join(root, time.strftime("%Y/%m/%d", time.localtime(moment)))


@pytest.fixture
def env(tmp_path):
    settings = api_settings(tmp_path, api_public_url="https://pbx.example.com/clinica")
    clock = Clock(STARTED + 3600)
    app = create_app(settings, build_context(settings, clock=clock))
    store = Store(settings.db_path)
    return settings, clock, app.test_client(), store


def stored_call(store, recording_file, started_at=STARTED, **fields):
    with store.transaction():
        return store.insert_call(dict({"direction": "in", "started_at": started_at, "ended_at": started_at + 60,
                                       "recording_file": recording_file}, **fields))


def put_file(settings, name, data=AUDIO, moment=STARTED):
    folder = day_dir(settings.recordings_dir, moment)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data)


def link(client, call_id, key="callID"):
    status, answer = post(client, "/api/2.0/stats/call-record.json", {key: call_id})
    assert answer["status"] == "success", answer
    check(answer, "CallRecordAnswer")  # Binotel's shape
    return answer["url"]


def local(url):
    """The path and query of a link, for the test client."""
    parts = urlsplit(url)
    return parts.path + "?" + parts.query


def test_a_link_plays_the_wav_recording_in_a_browser(env):
    settings, clock, client, store = env
    name = "in-0443334000-0670219424-20261126-174453-1795715093.0.wav"
    put_file(settings, name)
    call_id = stored_call(store, name)
    url = link(client, str(call_id))
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "pbx.example.com", f"/clinica/recording/{call_id}.wav")
    query = parse_qs(parts.query)
    assert query["Expires"] == [str(int(clock.now) + 900)] and len(query["Signature"][0]) == 43
    response = client.get(local(url))
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "audio/wav"
    assert response.headers["Accept-Ranges"] == "bytes"
    assert response.data == AUDIO


def test_the_browser_can_seek_with_byte_ranges(env):
    settings, clock, client, store = env
    put_file(settings, "r.wav")
    url = local(link(client, stored_call(store, "r.wav")))
    response = client.get(url, headers={"Range": "bytes=100-199"})
    assert response.status_code == 206
    assert response.headers["Content-Range"] == f"bytes 100-199/{len(AUDIO)}"
    assert response.data == AUDIO[100:200]
    tail = client.get(url, headers={"Range": "bytes=-16"})
    assert (tail.status_code, tail.data) == (206, AUDIO[-16:])
    beyond = client.get(url, headers={"Range": f"bytes={len(AUDIO) + 10}-"})
    assert beyond.status_code == 416


def test_an_mp3_recording_is_served_as_mp3(env):
    settings, clock, client, store = env
    put_file(settings, "out-1.mp3", b"ID3" + AUDIO)
    url = link(client, stored_call(store, "out-1.mp3"), key="generalCallID")
    assert urlsplit(url).path.endswith(".mp3")
    response = client.get(local(url))
    assert (response.headers["Content-Type"], response.data) == ("audio/mpeg", b"ID3" + AUDIO)


def test_a_link_works_until_it_expires_and_never_after(env):
    settings, clock, client, store = env
    put_file(settings, "r.wav")
    url = local(link(client, stored_call(store, "r.wav")))
    clock.now += 899
    assert client.get(url).status_code == 200
    clock.now += 2
    response = client.get(url)
    assert (response.status_code, response.data) == (403, b"expired\n")


@pytest.mark.parametrize("tamper", [
    lambda path, q: (path.replace(".wav", ".mp3"), q),
    lambda path, q: (path.replace("/recording/", "/recording/1"), q),
    lambda path, q: (path, q.replace("Expires=", "Expires=1")),
    lambda path, q: (path, q.replace("Expires=", "Expires=0")),
    lambda path, q: (path, q[:-1] + ("A" if q[-1] != "A" else "B")),
    lambda path, q: (path, q.split("&")[0]),
    lambda path, q: (path, ""),
    lambda path, q: (path, q + "&Signature=" + "A" * 43),
])
def test_a_changed_link_opens_nothing(env, tamper):
    settings, clock, client, store = env
    put_file(settings, "r.wav")
    stored_call(store, "r.wav", id=1795715093000)  # ids the tampering may aim at exist too
    stored_call(store, "r.wav", id=11795715093001)
    path, query = local(link(client, 1795715093000)).split("?")
    path, query = tamper(path, query)
    response = client.get(path + ("?" + query if query else ""))
    assert response.status_code == 403


def test_a_link_made_by_one_server_works_on_another_sharing_the_data_directory(env, tmp_path):
    settings, clock, client, store = env
    put_file(settings, "r.wav")
    url = local(link(client, stored_call(store, "r.wav")))
    other = create_app(settings, build_context(settings, clock=clock)).test_client()
    assert other.get(url).status_code == 200


def test_the_link_key_is_random_private_and_kept(tmp_path):
    first = load_link_key(str(tmp_path))
    assert len(first) == 32
    assert stat.S_IMODE(os.stat(tmp_path / KEY_FILE).st_mode) == 0o600
    assert load_link_key(str(tmp_path)) == first
    assert load_link_key(str(tmp_path / "other")) != first
    (tmp_path / KEY_FILE).write_text("not hex\n")
    with pytest.raises(ValueError, match=KEY_FILE):
        load_link_key(str(tmp_path))


@pytest.mark.parametrize("name", [
    "../../../etc/passwd", "2026/11/26/r.wav", "..\\r.wav", ".hidden.wav", "r.wav\x00.mp3", "", "noextension",
])
def test_recording_names_with_paths_are_never_served(env, name):
    settings, clock, client, store = env
    put_file(settings, "r.wav")
    call_id = stored_call(store, name)
    status, answer = post(client, "/stats/call-record.json", {"callID": call_id})
    assert answer["code"] in (Code.NO_RECORDING, Code.RECORDING_MISSING)


def test_a_symlink_out_of_the_recordings_directory_is_refused(env, tmp_path):
    settings, clock, client, store = env
    secret = tmp_path / "secret.wav"
    secret.write_bytes(b"not for the CRM")
    folder = day_dir(settings.recordings_dir, STARTED)
    os.makedirs(folder)
    os.symlink(secret, os.path.join(folder, "evil.wav"))
    status, answer = post(client, "/stats/call-record.json", {"callID": stored_call(store, "evil.wav")})
    assert answer["code"] == Code.RECORDING_MISSING


@pytest.mark.parametrize("path", [
    "/recording/..%2F..%2Fetc%2Fpasswd", "/recording/../../etc/passwd.wav", "/recording/1.wav/../x",
    "/recording/abc.wav", "/recording/1.WAV", "/recording/1.w av",
])
def test_url_path_tricks_find_no_route(env, path):
    settings, clock, client, store = env
    assert client.get(path + "?Expires=1&Signature=" + "A" * 43).status_code == 404


def test_a_call_recorded_across_midnight_is_found_in_the_next_day(env):
    settings, clock, client, store = env
    started = STARTED
    put_file(settings, "late.wav", moment=started + 86400)
    call_id = stored_call(store, "late.wav", started_at=started, answered_at=started + 86400)
    assert client.get(local(link(client, call_id))).status_code == 200


def test_the_date_in_a_freepbx_file_name_is_tried_first(env):
    settings, clock, client, store = env
    name = "q-400-0670219427-20250102-090000-1735808400.7.wav"
    folder = os.path.join(settings.recordings_dir, "2025", "01", "02")
    os.makedirs(folder)
    with open(os.path.join(folder, name), "wb") as f:
        f.write(AUDIO)
    call = {"recording_file": name, "started_at": STARTED}
    assert recording_path(settings.recordings_dir, call) == os.path.join(os.path.realpath(folder), name)


@pytest.mark.parametrize("params, code", [
    ({"callID": 4242}, Code.NO_SUCH_CALL),
    ({"callID": "x"}, Code.INVALID_PARAMETER),
    ({"callID": [1]}, Code.INVALID_PARAMETER),
    ({}, Code.MISSING_PARAMETER),
])
def test_call_record_errors(env, params, code):
    settings, clock, client, store = env
    status, answer = post(client, "/stats/call-record.json", params)
    assert (status, answer["code"]) == (200, code)


def test_a_call_without_recording_or_without_its_file(env):
    settings, clock, client, store = env
    status, answer = post(client, "/stats/call-record.json", {"callID": stored_call(store, "")})
    assert answer == {"status": "error", "code": Code.NO_RECORDING, "message": "the call has no recording",
                      "signature": answer["signature"]}
    status, answer = post(client, "/stats/call-record.json", {"callID": stored_call(store, "gone.wav")})
    assert answer["code"] == Code.RECORDING_MISSING


def test_a_file_deleted_after_the_link_was_made_is_a_404(env):
    settings, clock, client, store = env
    put_file(settings, "r.wav")
    url = local(link(client, stored_call(store, "r.wav")))
    os.unlink(os.path.join(day_dir(settings.recordings_dir, STARTED), "r.wav"))
    assert client.get(url).status_code == 404


def test_without_a_public_url_the_link_uses_the_address_and_prefix_the_crm_used(tmp_path):
    settings = api_settings(tmp_path)
    client = create_app(settings).test_client()
    store = Store(settings.db_path)
    put_file(settings, "r.wav", moment=time.time())
    call_id = stored_call(store, "r.wav", started_at=time.time())
    status, answer = post(client, "/clinica/api/2.0/stats/call-record.json", {"callID": call_id})
    assert answer["url"].startswith(f"http://localhost/clinica/api/2.0/recording/{call_id}.wav?Expires=")
    assert client.get(local(answer["url"])).status_code == 200


def test_link_checks_in_isolation():
    signer = LinkSigner(b"k" * 32, 900, clock=lambda: 1000.0)
    expires, signature = [kv.split("=", 1)[1] for kv in signer.query(5, "wav").split("&")]
    assert signer.problem(5, "wav", expires, signature) is None
    assert signer.problem(6, "wav", expires, signature) == "bad signature"
    assert signer.problem(5, "wav", None, signature) == "not a recording link"
    assert signer.problem(5, "wav", "1e9", signature) == "not a recording link"
    assert LinkSigner(b"x" * 32, 900, clock=lambda: 1000.0).problem(5, "wav", expires, signature) == "bad signature"
    far = LinkSigner(b"k" * 32, 86400, clock=lambda: 1000.0)
    e2, s2 = [kv.split("=", 1)[1] for kv in far.query(5, "wav").split("&")]
    assert signer.problem(5, "wav", e2, s2) == "not a recording link"  # lives longer than allowed
