"""Property-based fuzzing of every parser that takes outside input: the AGI env block and
Asterisk's answers (also through a whole hook), the env file and each setting, the API's
JSON bodies and signatures, Range headers and recording links, phone numbers and call ids.

The property is the same everywhere: no exception escapes but the parser's own clear
error, and what is accepted has the documented shape.

The normal run is bounded and the same every time (``derandomize``: a failure shows again
on the next run); ``CLINICA_FUZZ=thorough`` explores far more, with fresh random input.
"""

import json
import os
import socket
import string
import threading

import pytest
from support.api import KEY, SECRET, api_settings, signed_body
from support.net import free_port
from asterisk.agi import AGIException
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from clinica_asterisk.agi.reply import parse_reply, split_batch
from clinica_asterisk.agi.request import AgiRequest, EnvBlockError, parse_env_block, parse_env_line
from clinica_asterisk.api import php_json, signature
from clinica_asterisk.api.app import build_context, create_app
from clinica_asterisk.api.auth import authenticate, parse_body
from clinica_asterisk.api.errors import ApiError, Code
from clinica_asterisk.api.recordings import LinkSigner, usable_range
from clinica_asterisk.agi.channel import AgiChannel, ChannelClosed, LineStream
from clinica_asterisk.config import DEFAULTS, ConfigError, build_settings, env_file_text, read_env_file
from clinica_asterisk.deadline import Deadline
from clinica_asterisk.hooks.stages import HookServices, run_hook
from clinica_asterisk.calls.phone import digits_of, normalize
from clinica_asterisk.redact import scrub, shown_url
from clinica_asterisk.store.database import MAX_CALL_ID, Store, call_id_from_text

settings.register_profile("clinica-fuzz", max_examples=40, derandomize=True, deadline=None, database=None,
                          print_blob=True, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
settings.register_profile("clinica-fuzz-thorough", max_examples=2000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
FUZZ = settings.get_profile("clinica-fuzz-thorough" if os.environ.get("CLINICA_FUZZ") == "thorough" else "clinica-fuzz")
# Examples that each run a hook or an HTTP request: a quarter as many.
SLOW = settings(FUZZ, max_examples=max(10, FUZZ.max_examples // 4))

# Text as peers send it: anything, and bytes that look nearly right.
any_text = st.text(st.characters(codec="utf-8"), max_size=200)
env_like = st.one_of(any_text, st.builds(lambda k, v: f"agi_{k}: {v}", st.text(string.ascii_lowercase + "_", max_size=20),
                                         any_text))
raw_bytes = st.binary(max_size=3000)
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | any_text,
                           lambda inner: st.lists(inner, max_size=5) | st.dictionaries(any_text, inner, max_size=5),
                           max_leaves=20)


# --- the AGI env block ------------------------------------------------------------------

@FUZZ
@given(st.lists(env_like, max_size=40))
def test_an_env_block_is_parsed_or_refused_clearly(lines):
    try:
        env = parse_env_block(lines)
    except EnvBlockError:
        return
    request = AgiRequest(env)
    stage, args = request.stage_and_args
    assert isinstance(stage, str) and all(isinstance(a, str) for a in args)
    assert isinstance(request.script, str) and isinstance(request.network, bool)


@FUZZ
@given(any_text)
def test_an_env_line_is_a_key_and_a_value_or_refused(line):
    try:
        key, value = parse_env_line(line)
    except EnvBlockError:
        return
    assert key.startswith("agi_") and isinstance(value, str)


@FUZZ
@given(raw_bytes, st.booleans())
@example(b"agi_request: clinica-agi\n\n", False)
@example(b"agi_request: x\r\nagi_arg_1: ring-in\r\n\r\n", False)
def test_any_bytes_on_the_wire_give_a_request_or_a_clear_refusal(data, cut):
    """Whatever a peer sends before closing, the env block reader ends with a request,
    a refusal, or the news that the peer closed; never anything else, never waiting."""
    reader, writer = socket.socketpair()
    try:
        writer.sendall(data if not cut else data[: len(data) // 2])
        writer.shutdown(socket.SHUT_WR)
        stream = LineStream(reader.fileno(), reader.fileno())
        try:
            request = stream.read_request(Deadline(5))
        except (EnvBlockError, ChannelClosed):
            return
        assert "agi_request" in request.env
    finally:
        reader.close()
        writer.close()


# --- Asterisk's answers --------------------------------------------------------------------

@FUZZ
@given(any_text, st.lists(any_text, max_size=3))
@example("200 result=1 (Клієнт (VIP))", [])
@example("520-Invalid command syntax.", ["usage", "520 End of proper usage."])
def test_an_answer_line_is_parsed_or_refused_with_an_agi_error(line, usage):
    try:
        reply = parse_reply(line, usage)
    except AGIException:
        return
    assert all(isinstance(v, tuple) and len(v) == 2 for v in reply.values())


@FUZZ
@given(any_text, st.integers(0, 30))
def test_a_batch_value_splits_into_its_fields_or_into_none(value, count):
    fields = split_batch(value, count)
    assert fields is None or (len(fields) == count and all(isinstance(f, str) for f in fields))


class AnswersWith:
    """Asterisk's side of a hook session that answers every command with fuzzed bytes."""

    def __init__(self, env: bytes, answers):
        self.env, self.answers = env, list(answers)
        self.asterisk, self.script = socket.socketpair()
        self.asterisk.settimeout(10)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        try:
            self.asterisk.sendall(self.env)
            buffer = b""
            while True:
                chunk = self.asterisk.recv(65536)
                if not chunk:
                    return
                buffer += chunk
                while b"\n" in buffer:
                    _, buffer = buffer.split(b"\n", 1)
                    answer = self.answers.pop(0) if self.answers else b"200 result=1\n"
                    self.asterisk.sendall(answer)
        except OSError:
            return

    def close(self):
        self.script.close()
        self.thread.join(10)
        self.asterisk.close()


RING_IN_ENV = (b"agi_request: clinica-agi\nagi_channel: PJSIP/trunk-00000001\nagi_uniqueid: 1700000000.1\n"
               b"agi_arg_1: ring-in\nagi_arg_2: 0443334000\nagi_arg_3: 801\n\n")


@pytest.fixture(scope="module")
def hook_services(tmp_path_factory):
    from support.settings import make_settings

    url = f"http://127.0.0.1:{free_port()}/push"  # a CRM that is down: refused at once
    return HookServices.open(make_settings(tmp_path_factory.mktemp("fuzz"), crm_push_url=url, hook_deadline_ms=1000))


@SLOW
@given(st.lists(st.one_of(raw_bytes.map(lambda b: b + b"\n"),
                          any_text.map(lambda t: f"200 result=1 ({t})\n".encode("utf-8"))), max_size=6))
def test_a_hook_answered_with_anything_still_ends_and_never_raises(hook_services, answers):
    peer = AnswersWith(RING_IN_ENV, answers)
    try:
        stream = LineStream(peer.script.fileno(), peer.script.fileno())
        deadline = Deadline(1.0)
        channel = AgiChannel(stream, deadline)
        request = stream.read_request()
        result = run_hook(request, channel, hook_services, deadline)
        assert result.status in ("SENT", "QUEUED", "SKIPPED", "FAILED", "NOTFOUND")
    finally:
        peer.close()


# --- the env file and the settings --------------------------------------------------------

@FUZZ
@given(st.binary(max_size=2000))
@example(b"\xef\xbb\xbfCLINICA_LOG_LEVEL=DEBUG\n")
@example(b"# caf\xe9\nCLINICA_LOG_LEVEL=DEBUG\n")
def test_an_env_file_gives_text_or_an_error_naming_the_file(raw):
    try:
        text = env_file_text("/etc/clinica-asterisk/.env", raw)
    except ConfigError as exc:
        assert str(exc).startswith("/etc/clinica-asterisk/.env: line ")
        return
    assert isinstance(text, str)


@FUZZ
@given(st.binary(max_size=2000))
def test_reading_any_env_file_gives_settings_or_a_config_error(tmp_path_factory, raw):
    path = tmp_path_factory.mktemp("env") / "clinica.env"
    path.write_bytes(raw)
    try:
        values = read_env_file(str(path))
        build_settings(dict(DEFAULTS, **values))
    except ConfigError:
        pass


@FUZZ
@given(st.sampled_from(sorted(DEFAULTS)), st.text(st.characters(codec="utf-8", exclude_categories=()), max_size=80))
@example("CLINICA_CRM_PUSH_URL", "http://127.0.0.1:99999/push")
@example("CLINICA_DATA_DIR", "\x00")
@example("CLINICA_CRM_PUSH_URL", "http://[::1/push")
def test_any_value_of_any_setting_is_accepted_or_refused_by_name(key, value):
    try:
        build_settings(dict(DEFAULTS, **{key: value}))
    except ConfigError as exc:
        assert str(exc).startswith(key + ":")


# --- the API: bodies, signatures, methods, recording links ------------------------------

@FUZZ
@given(st.one_of(raw_bytes, json_values.map(lambda v: json.dumps(v).encode())))
@example(b"[" * 600 + b"]" * 600)
@example(b'{"a": 1e999999}')
@example(b'"\\ud800"')
def test_a_body_is_an_object_or_a_clear_error(raw):
    try:
        body = parse_body(raw)
    except ApiError as exc:
        assert exc.code == Code.BAD_JSON
        return
    assert isinstance(body, dict)


@FUZZ
@given(st.dictionaries(any_text, json_values, max_size=6), st.one_of(st.none(), json_values))
def test_authentication_accepts_the_right_signature_only_and_says_why_not(params, forged):
    keys = {KEY: SECRET}
    good = signed_body(params)
    signed = authenticate(good, keys)
    assert signed.key == KEY and signed.params == {k: v for k, v in params.items() if k not in ("key", "signature")}
    bad = dict(good, signature=forged)
    try:
        authenticate(bad, keys)
        assert forged == good["signature"] or (isinstance(forged, str) and forged.lower() == good["signature"])
    except ApiError as exc:
        assert exc.code in (Code.MISSING_KEY, Code.BAD_SIGNATURE)


@FUZZ
@given(json_values, any_text)
def test_verify_never_raises(body, sig):
    assert signature.verify(SECRET, body if isinstance(body, dict) else {"v": body}, sig) in (True, False)


@FUZZ
@given(st.one_of(raw_bytes, any_text))
def test_php_json_decodes_or_says_it_is_not_json(text):
    try:
        php_json.decode(text)
    except php_json.JsonError:
        pass


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("api")
    ami_port = free_port()  # a manager that is down: click-to-call fails at once
    settings_ = api_settings(tmp, ami_user="clinica", ami_secret="x", ami_port=ami_port, ami_timeout_ms=300)
    return create_app(settings_, build_context(settings_)).test_client()


DOCUMENTED = {int(c) for c in Code} - {int(Code.INTERNAL)}
PARAMS = {
    "/api/2.0/stats/call-details.json": ("generalCallID",),
    "/api/2.0/stats/call-record.json": ("callID", "generalCallID"),
    "/api/2.0/calls/ext-to-phone.json": ("ext_number", "phone_number", "callTimeToExt"),
}


@SLOW
@given(st.sampled_from(sorted(PARAMS)), st.data())
def test_every_signed_request_gets_a_signed_answer_and_never_an_internal_error(api, path, data):
    names = PARAMS[path]
    params = data.draw(st.dictionaries(st.sampled_from(names) | any_text, json_values, max_size=4))
    response = api.post(path, data=json.dumps(signed_body(params)), content_type="application/json")
    assert response.status_code == 200
    answer = json.loads(response.data)
    assert answer["signature"] == signature.sign(SECRET, answer)
    assert answer["status"] == "success" or answer["code"] in DOCUMENTED, answer


@SLOW
@given(st.sampled_from(sorted(PARAMS)), raw_bytes,
       st.dictionaries(st.sampled_from(["Content-Type", "Content-Length", "X-Forwarded-Host", "Range", "Expect"]),
                       st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40), max_size=3))
def test_any_body_and_headers_get_a_signed_error_never_a_crash(api, path, raw, headers):
    headers.pop("Content-Length", None)
    response = api.post(path, data=raw, headers=headers)
    assert response.status_code in (200, 400, 413)
    if response.status_code != 400:
        answer = json.loads(response.data)
        assert answer["status"] == "error" and answer["code"] in DOCUMENTED


@FUZZ
@given(st.one_of(st.none(), any_text, st.builds(lambda a, b: f"bytes={a}-{b}", st.integers(-5, 10**20),
                                                  st.integers(-5, 10**20))))
def test_a_range_header_is_usable_or_ignored(header):
    assert usable_range(header) in (True, False)


@pytest.fixture(scope="module")
def recording_api(tmp_path_factory):
    import time

    tmp = tmp_path_factory.mktemp("rec")
    settings_ = api_settings(tmp)
    store = Store(settings_.db_path)
    name = "in-1.wav"
    folder = os.path.join(settings_.recordings_dir, time.strftime("%Y/%m/%d"))
    os.makedirs(folder)
    with open(os.path.join(folder, name), "wb") as f:
        f.write(b"RIFF" + bytes(range(256)) * 4)
    with store.transaction():
        call_id = store.insert_call({"direction": "in", "started_at": time.time(), "recording_file": name})
    context = build_context(settings_)
    return create_app(settings_, context).test_client(), context.signer, call_id


@SLOW
@given(st.one_of(st.none(), st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=200)))
def test_a_recording_link_with_any_range_is_served_ignored_or_416(recording_api, header):
    client, signer, call_id = recording_api
    headers = {"Range": header.encode("utf-8").decode("latin-1")} if header is not None else {}
    response = client.get(f"/recording/{call_id}.wav?{signer.query(call_id, 'wav')}", headers=headers)
    assert response.status_code in (200, 206, 416)


@SLOW
@given(st.text(string.digits, min_size=1, max_size=22), st.sampled_from(["wav", "mp3", "x"]),
       st.one_of(st.none(), any_text), st.one_of(st.none(), any_text), st.booleans())
def test_a_tampered_or_forged_recording_link_is_refused_never_a_crash(recording_api, call_id, ext, expires, sig, signed):
    client, signer, _ = recording_api
    if signed:
        query = signer.query(int(call_id), ext)
    else:
        query = "&".join(f"{k}={v}" for k, v in (("Expires", expires), ("Signature", sig)) if v is not None)
    response = client.get(f"/recording/{call_id}.{ext}?{query}")
    assert response.status_code in (403, 404)


@FUZZ
@given(st.integers(-10, 10**25), st.text(string.ascii_lowercase + string.digits, max_size=9),
       st.one_of(st.none(), any_text), st.one_of(st.none(), any_text))
def test_a_link_signer_says_why_or_lets_it_through(call_id, ext, expires, sig):
    signer = LinkSigner(b"k" * 32, 900)
    problem = signer.problem(call_id, ext, expires, sig)
    assert problem is None or isinstance(problem, str)


# --- numbers -------------------------------------------------------------------------------

@FUZZ
@given(any_text, st.sampled_from(["national", "e164", "raw"]), st.text(string.digits, min_size=1, max_size=3),
       st.text(string.digits, max_size=2))
@example("+380670219424", "national", "380", "0")
@example("²³", "national", "380", "0")
@example("00", "e164", "380", "0")  # was "+": an international prefix and no number
def test_a_phone_number_of_any_text_is_digits_or_empty(raw, fmt, country, prefix):
    digits = digits_of(raw)
    assert digits == "" or (digits.lstrip("+").isascii() and digits.lstrip("+").isdigit() and len(digits) <= 21)
    shown = normalize(raw, fmt, country, prefix)
    assert shown == "" or (shown.lstrip("+").isascii() and shown.lstrip("+").isdigit())


@FUZZ
@given(any_text)
@example("²")
@example("1" * 25)
@example("9223372036854775808")
def test_a_call_id_on_a_channel_is_a_64_bit_id_or_none(text):
    call_id = call_id_from_text(text)
    assert call_id is None or 0 < call_id <= MAX_CALL_ID


@FUZZ
@given(st.integers(1, MAX_CALL_ID))
def test_every_call_id_reads_back(call_id):
    assert call_id_from_text(str(call_id)) == call_id


# --- what of a URL may be shown -------------------------------------------------------------

@FUZZ
@given(st.text(st.characters(codec="utf-8"), min_size=1, max_size=60).filter(lambda p: ":" not in p and "@" not in p
                                                                            and "/" not in p and "?" not in p),
       any_text)
def test_a_scrubbed_text_never_holds_the_urls_password_or_query(password, around):
    url = f"https://clinic:{password}@crm.example/push?token={password}"
    assert password not in scrub(f"{around} {url} {around}", url).replace(around, "")
    assert password not in shown_url(url) or password in "https://crm.example/push"
