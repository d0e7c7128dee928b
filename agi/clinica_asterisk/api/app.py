"""The Flask application: routes, body limit, authentication, signed answers.

Flow of a CRM request: route → body (bounded) → JSON → key and signature → method →
signed answer.  Methods are served under any prefix (``/api/2.0/``, ``/clinica/``, none),
with or without ``.json``; ``stats/calls/ext-to-phone`` is the seed's spelling of
``calls/ext-to-phone``.  Recording links (``…/recording/<id>.<ext>?Expires=…&Signature=…``)
are plain GETs from the CRM user's browser.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import socket
import sqlite3
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from flask import Flask, Response, request, send_file
from werkzeug.exceptions import ClientDisconnected, HTTPException

from ..calls.numbers import NumberFormat
from ..config import Settings
from ..pbx.channels import LIST_ACTION, LIST_END, ChannelListError, grace_s, parse_channel_list
from ..store.database import MAX_CALL_ID, StoreError
from . import call_details, click_to_call, employees, hangup, php_json, recordings, signature, stats
from ..pbx.ami import AmiClient, AmiError, ami_client
from .auth import answer_secret, authenticate, parse_body
from .directory import Directory
from .errors import ApiError, Code
from .freepbx_db import FreePbxSource, source_for
from .names import Names, current_names
from .signature import sign
from .stores import StorePerThread

log = logging.getLogger("clinica_asterisk.api")

METHOD_NAMES = {
    "stats/call-details": "stats/call-details",
    "stats/call-record": "stats/call-record",
    "calls/ext-to-phone": "calls/ext-to-phone",
    "stats/calls/ext-to-phone": "calls/ext-to-phone",
    "calls/hangup-call": "calls/hangup-call",
    "settings/list-of-employees": "settings/list-of-employees",
    **{name: name for name in stats.METHODS},
}
# The longest an online-calls request waits for each step of Asterisk's channel list.
ONLINE_AMI_TIMEOUT_S = 1.0
_RECORDING = re.compile(r"(?:^|/)recording/([0-9]{1,19})\.([a-z0-9]{1,8})\Z")


@dataclass
class ApiContext:
    settings: Settings
    stores: StorePerThread
    directory: Directory
    signer: recordings.LinkSigner
    ami: Optional[AmiClient]
    pbx: str
    clock: Callable[[], float]
    freepbx: Optional[FreePbxSource] = None


def resolve_method(path: str) -> Tuple[Optional[str], str]:
    """The method a path names and the prefix before it: ``api/2.0/stats/call-details.json``
    -> (``stats/call-details``, ``api/2.0``)."""
    bare = path.strip("/")
    if bare.endswith(".json"):
        bare = bare[: -len(".json")]
    for name in sorted(METHOD_NAMES, key=len, reverse=True):
        if bare == name or bare.endswith("/" + name):
            return METHOD_NAMES[name], bare[: -len(name)].strip("/")
    return None, ""


def answer_text(answer: Mapping[str, Any]) -> str:
    """The answer as sent: PHP's escapes (``\\/``, ``\\uXXXX``), objects kept as objects."""
    return json.dumps(answer, separators=(",", ":"), ensure_ascii=True).replace("/", "\\/")


def signed_answer_text(answer: Mapping[str, Any], secret: str) -> str:
    """:func:`answer_text` of the answer with its signature (:func:`~.signature.sign`).

    Each member is written once for both when PHP's text of it (:func:`~.php_json.php_text`)
    is Python's too (no floats, no empty or list-like objects, no DEL): the signed text is
    then the member texts in ``ksort`` order.  Otherwise, or for an answer that carries
    ``key`` or ``signature`` itself, the two are written separately."""
    members = {}
    ordered = dict(php_json.ksort(answer.items()))
    if answer and not signature.EXCLUDED.intersection(answer) and not php_json.is_list(ordered):
        for name, value in answer.items():
            text = php_json.php_text(value) if isinstance(name, str) else None
            if text is None or "\x7f" in text or "\x7f" in name:
                break
            members[name] = f"{php_json.php_string(name)}:{text}"
        else:
            digest = signature.digest(secret, "{" + ",".join(members[name] for name in ordered) + "}")
            return "{" + ",".join(members.values()) + ',"signature":"' + digest + '"}'
    body = dict(answer)
    body["signature"] = sign(secret, answer)
    return answer_text(body)


def signed_response(answer: Mapping[str, Any], secret: str, status: int = 200) -> Response:
    return Response(signed_answer_text(answer, secret), status=status, mimetype="application/json")


def _single(args, name: str) -> Optional[str]:
    """A query parameter given exactly once, else None (a second copy is a tampered link)."""
    values = args.getlist(name)
    return values[0] if len(values) == 1 else None


# --- methods: (context, params, prefix) -> answer --------------------------------------

def _names(ctx: ApiContext) -> Names:
    """Employees, DID names and trunk numbers as of now (the directory file, the settings
    and what was read of FreePBX's database)."""
    s = ctx.settings
    return current_names(ctx.directory, ctx.freepbx, s.country_code, s.trunk_prefix, s.trunk_numbers,
                         NumberFormat(s.number_format, s.country_code, s.trunk_prefix))


def _call_details(ctx: ApiContext, params: Dict[str, Any], prefix: str) -> Dict[str, Any]:
    return call_details.call_details(ctx.stores.get().conn, params, lambda: _names(ctx), ctx.settings.company_id,
                                     ctx.clock())


def _live_channels(ctx: ApiContext):
    """The ids of Asterisk's live channels, or None when there is no AMI user or it did
    not answer (then online-calls answers from the store alone)."""
    if ctx.ami is None:
        return None
    ami = dataclasses.replace(ctx.ami, timeout_s=min(ctx.ami.timeout_s, ONLINE_AMI_TIMEOUT_S))
    try:
        return parse_channel_list(ami.collect(LIST_ACTION, LIST_END))
    except (AmiError, ChannelListError) as exc:
        log.warning("online-calls: Asterisk's channels not listed (%s): answering from the call store alone", exc)
        return None


def _stats(method: str):
    def run(ctx: ApiContext, params: Dict[str, Any], prefix: str) -> Dict[str, Any]:
        s = ctx.settings
        context = stats.StatsContext(ctx.stores.get().conn, lambda: _names(ctx), s.company_id, ctx.clock(),
                                     s.number_format, s.country_code, s.trunk_prefix, lambda: _live_channels(ctx),
                                     grace_s(s.ami_timeout_s))
        return stats.METHODS[method](context, params)
    return run


def _hangup_call(ctx: ApiContext, params: Dict[str, Any], prefix: str) -> Dict[str, Any]:
    return hangup.hangup_call(params, ctx.stores.get(), ctx.ami)


def _list_of_employees(ctx: ApiContext, params: Dict[str, Any], prefix: str) -> Dict[str, Any]:
    return employees.list_of_employees(_names(ctx).employees)


def _base_url(ctx: ApiContext, prefix: str) -> str:
    if ctx.settings.api_public_url:
        return ctx.settings.api_public_url
    return request.host_url.rstrip("/") + ("/" + prefix if prefix else "")


def _call_record(ctx: ApiContext, params: Dict[str, Any], prefix: str) -> Dict[str, Any]:
    call_id = recordings.record_call_id(params)
    call = ctx.stores.get().call(call_id)
    url = recordings.record_link(call, ctx.settings.recordings_dir, ctx.signer, _base_url(ctx, prefix))
    return {"status": "success", "url": url}


def _ext_to_phone(ctx: ApiContext, params: Dict[str, Any], prefix: str) -> Dict[str, Any]:
    return click_to_call.click_to_call(params, ctx.settings, ctx.stores.get(), ctx.directory, ctx.ami,
                                       ctx.pbx, ctx.clock, ctx.freepbx)


METHODS = {
    "stats/call-details": _call_details,
    "stats/call-record": _call_record,
    "calls/ext-to-phone": _ext_to_phone,
    "calls/hangup-call": _hangup_call,
    "settings/list-of-employees": _list_of_employees,
    **{name: _stats(name) for name in stats.METHODS},
}


# --- the application ------------------------------------------------------------------

def build_context(settings: Settings, clock: Callable[[], float] = time.time,
                  ami: Optional[AmiClient] = None, freepbx: Optional[FreePbxSource] = None) -> ApiContext:
    if ami is None:
        ami = ami_client(settings)
    return ApiContext(
        settings=settings,
        stores=StorePerThread(settings.store_location),
        directory=Directory(settings.directory_file),
        signer=recordings.LinkSigner(recordings.load_link_key(settings.data_dir), settings.record_link_ttl_s, clock),
        ami=ami,
        pbx=settings.pbx_id or socket.gethostname(),
        clock=clock,
        freepbx=freepbx or source_for(settings.freepbx_db, settings.freepbx_conf, settings.freepbx_refresh_s),
    )


def create_app(settings: Settings, context: Optional[ApiContext] = None) -> Flask:
    ctx = context or build_context(settings)
    app = Flask("clinica_asterisk.api")
    app.extensions["clinica_api"] = ctx
    keys = settings.api_keys
    fallback_secret = answer_secret(keys, None)

    def read_body() -> bytes:
        limit = settings.api_max_body
        too_large = ApiError(Code.BODY_TOO_LARGE, f"the body is larger than {limit} bytes", http_status=413)
        if request.content_length is not None and request.content_length > limit:
            raise too_large
        try:
            data = request.stream.read(limit + 1)
        except ClientDisconnected:
            raise ApiError(Code.BAD_JSON, "the body is shorter than announced") from None
        if len(data) > limit:
            raise too_large
        return data

    def api_call(method: str, prefix: str) -> Response:
        started = time.monotonic()
        secret, key_name = fallback_secret, "-"
        try:
            body = parse_body(read_body())
            secret = answer_secret(keys, body.get("key"))
            signed = authenticate(body, keys)
            key_name = signed.key
            answer, status = METHODS[method](ctx, signed.params, prefix), 200
            outcome = "success"
        except ApiError as exc:
            answer, status, outcome = exc.answer(), exc.http_status, f"error {int(exc.code)}"
        except (StoreError, sqlite3.Error) as exc:
            log.warning("api method=%s: call store: %s", method, exc)
            answer, status = ApiError(Code.STORE_UNAVAILABLE, "the call store is unavailable").answer(), 200
            outcome = f"error {int(Code.STORE_UNAVAILABLE)}"
        except Exception:  # a bug costs one signed error answer, never the server
            log.exception("api method=%s failed", method)
            answer, status, outcome = ApiError(Code.INTERNAL, "internal error").answer(), 200, f"error {int(Code.INTERNAL)}"
        log.info("api method=%s key=%s outcome=%s ms=%d", method, key_name, outcome,
                 (time.monotonic() - started) * 1000)
        return signed_response(answer, secret, status)

    def recording(call_id: int, ext: str) -> Response:
        problem = ctx.signer.problem(call_id, ext, _single(request.args, "Expires"), _single(request.args, "Signature"))
        if problem:
            log.info("recording call=%s refused: %s", call_id, problem)
            return Response(f"{problem}\n", status=403, mimetype="text/plain")
        try:
            # A link signed for an id no call can have (beyond 64 bits) finds nothing.
            call = ctx.stores.get().call(call_id) if 0 < call_id <= MAX_CALL_ID else None
        except (StoreError, sqlite3.Error) as exc:
            log.warning("recording call=%s: call store: %s", call_id, exc)
            return Response("the call store is unavailable\n", status=503, mimetype="text/plain")
        path = recordings.recording_path(settings.recordings_dir, call) if call else None
        if path is None or recordings.file_extension(call["recording_file"]) != ext:
            return Response("no such recording\n", status=404, mimetype="text/plain")
        if not recordings.usable_range(request.headers.get("Range")):
            request.environ.pop("HTTP_RANGE", None)  # ignored, as RFC 9110 allows: the whole file
        response = send_file(path, mimetype=recordings.content_type(ext), conditional=True, etag=True,
                             max_age=0, download_name=f"{call_id}.{ext}")
        response.headers["Cache-Control"] = "private, max-age=0"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    def http_error(status: int, code: Code, message: str) -> Response:
        return signed_response(ApiError(code, message, status).answer(), fallback_secret, status)

    # No automatic OPTIONS: it would answer 200 with an empty body; the API says 405.
    @app.route("/", defaults={"path": ""}, methods=["GET", "HEAD", "POST"], provide_automatic_options=False)
    @app.route("/<path:path>", methods=["GET", "HEAD", "POST"], provide_automatic_options=False)
    def dispatch(path: str) -> Response:
        method, prefix = resolve_method(path)
        if method is not None:
            if request.method != "POST":
                return http_error(405, Code.METHOD_NOT_ALLOWED, "use POST")
            return api_call(method, prefix)
        match = _RECORDING.search(path)
        if match:
            if request.method == "POST":
                return http_error(405, Code.METHOD_NOT_ALLOWED, "use GET")
            return recording(int(match.group(1)), match.group(2))
        return http_error(404, Code.NO_SUCH_METHOD, "no such method")

    @app.errorhandler(HTTPException)
    def werkzeug_error(exc: HTTPException) -> Response:
        codes = {404: Code.NO_SUCH_METHOD, 405: Code.METHOD_NOT_ALLOWED, 413: Code.BODY_TOO_LARGE}
        return http_error(exc.code or 400, codes.get(exc.code, Code.BAD_JSON), exc.name)

    return app
