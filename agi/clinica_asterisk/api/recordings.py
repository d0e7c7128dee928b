"""stats/call-record: temporary, signed links to a call's recording, and the files behind
them.

A link is ``<base>/recording/<callID>.<ext>?Expires=<unix time>&Signature=<HMAC>``.  The
HMAC-SHA256 covers the call id, the extension and the expiry time, under a random key
created once in the data directory (``api-link.key``, mode 0600; delete it to invalidate
every link at once).  A link works until ``Expires`` (``CLINICA_RECORD_LINK_TTL_S`` after it
was made, 15 minutes by default) and never after; changing any part of it breaks the HMAC.

The file is found from the store, never from the URL: FreePBX writes
``<recordings dir>/YYYY/MM/DD/<CDR(recordingfile)>``, so the date comes from the file name
(FreePBX puts ``-YYYYMMDD-`` in it) or from the call's start, answer or end in local time
(a call can cross midnight).  A name with a path in it, or a file that resolves outside
the recordings directory (a symlink), is refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import re
import secrets
import time
from typing import Any, Callable, Iterator, List, Mapping, Optional

from .call_details import parse_id
from .errors import ApiError, Code

log = logging.getLogger("clinica_asterisk.api.recordings")

KEY_FILE = "api-link.key"
CONTENT_TYPES = {
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "ogg": "audio/ogg",
    "opus": "audio/ogg",
    "gsm": "audio/x-gsm",
}
_FREEPBX_DATE = re.compile(r"-((?:19|20)[0-9]{2})([01][0-9])([0-3][0-9])-[0-9]{6}-")
_SIGNATURE = re.compile(r"[A-Za-z0-9_-]{43}\Z")
_EXPIRES = re.compile(r"[1-9][0-9]{0,11}\Z")  # one spelling per moment: no leading zeros
EXTENSION = re.compile(r"[a-z0-9]{1,8}\Z")
# Clocks of the machines involved may differ a little; a link never lives longer than this.
_SKEW_S = 60


# --- the HMAC key ---------------------------------------------------------------------

def load_link_key(data_dir: str) -> bytes:
    """The link key, created on first use.  Written to a temporary file and linked into
    place, so concurrent starts agree on one key and nobody reads half a key."""
    path = os.path.join(data_dir, KEY_FILE)
    os.makedirs(data_dir, exist_ok=True)
    if not os.path.exists(path):
        tmp = f"{path}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, secrets.token_hex(32).encode("ascii") + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    with open(path, "rb") as f:
        text = f.read().strip()
    try:
        key = binascii.unhexlify(text)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) < 16:
        raise ValueError(f"{path}: not a recording link key (delete it to create a new one)")
    if os.stat(path).st_mode & 0o077:
        log.warning("%s is readable by other users; it should be mode 0600", path)
    return key


# --- links ----------------------------------------------------------------------------

class LinkSigner:
    def __init__(self, key: bytes, ttl_s: int, clock: Callable[[], float] = time.time):
        self._key = key
        self.ttl_s = ttl_s
        self.clock = clock

    def _mac(self, call_id: int, ext: str, expires: int) -> str:
        message = f"recording:{call_id}.{ext}:{expires}".encode("ascii")
        mac = hmac.new(self._key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")

    def query(self, call_id: int, ext: str) -> str:
        expires = int(self.clock()) + self.ttl_s
        return f"Expires={expires}&Signature={self._mac(call_id, ext, expires)}"

    def problem(self, call_id: int, ext: str, expires: Optional[str], signature: Optional[str]) -> Optional[str]:
        """Why the link does not open the recording, or None when it does."""
        if not expires or not signature or not _EXPIRES.match(expires) or not _SIGNATURE.match(signature):
            return "not a recording link"
        if not hmac.compare_digest(self._mac(call_id, ext, int(expires)), signature):
            return "bad signature"
        now = self.clock()
        if int(expires) < now:
            return "expired"
        if int(expires) > now + self.ttl_s + _SKEW_S:
            return "not a recording link"
        return None


# --- files ----------------------------------------------------------------------------

def file_extension(recording_file: str) -> str:
    """``wav`` for ``….wav``; '' when the name has no usable extension."""
    ext = os.path.splitext(recording_file)[1].lstrip(".").lower()
    return ext if EXTENSION.match(ext) else ""


def content_type(ext: str) -> str:
    return CONTENT_TYPES.get(ext, "application/octet-stream")


def safe_name(recording_file: str) -> bool:
    return bool(recording_file) and not (
        "/" in recording_file or "\\" in recording_file or "\0" in recording_file
        or recording_file.startswith(".") or len(recording_file) > 255
    )


def _candidate_days(call: Mapping[str, Any]) -> Iterator[str]:
    seen: List[str] = []
    match = _FREEPBX_DATE.search(call.get("recording_file") or "")
    if match:
        seen.append("/".join(match.groups()))
    for moment in (call.get("started_at"), call.get("answered_at"), call.get("ended_at")):
        if moment:
            seen.append(time.strftime("%Y/%m/%d", time.localtime(moment)))
    return iter(dict.fromkeys(seen))


def recording_path(recordings_dir: str, call: Mapping[str, Any]) -> Optional[str]:
    """The recording's file on disk, or None; always inside ``recordings_dir``."""
    name = call.get("recording_file") or ""
    if not safe_name(name) or not file_extension(name):
        return None
    root = os.path.realpath(recordings_dir)
    for day in _candidate_days(call):
        path = os.path.realpath(os.path.join(root, day, name))
        if os.path.commonpath([root, path]) == root and os.path.isfile(path):
            return path
    return None


# One byte range: first-last, first- or -suffix (RFC 9110), numbers of sane length.
_SINGLE_RANGE = re.compile(r"bytes=(?:([0-9]{1,18})-([0-9]{0,18})|-([1-9][0-9]{0,17}))\Z")


def usable_range(header: Optional[str]) -> bool:
    """Whether a ``Range`` header asks for one byte range that can be served.  Anything
    else (malformed, another unit, several ranges: a player asks for one) is ignored and
    the whole file sent, as RFC 9110 allows, rather than answered 416.  Pure."""
    if header is None:
        return True
    found = _SINGLE_RANGE.match(header)
    if not found:
        return False
    first, last, _ = found.groups()
    return first is None or not last or int(first) <= int(last)


def record_call_id(params: Mapping[str, Any]) -> int:
    """``callID`` (Binotel's name), else ``generalCallID``: both are the call's id here."""
    for name in ("callID", "generalCallID"):
        if name in params:
            return parse_id(params[name], name)
    raise ApiError(Code.MISSING_PARAMETER, "missing parameter: callID")


def record_link(call: Optional[Mapping[str, Any]], recordings_dir: str, signer: LinkSigner, base_url: str) -> str:
    """The URL of a call's recording, or the reason there is none."""
    if call is None:
        raise ApiError(Code.NO_SUCH_CALL, "no such call")
    if not call.get("recording_file"):
        raise ApiError(Code.NO_RECORDING, "the call has no recording")
    if recording_path(recordings_dir, call) is None:
        raise ApiError(Code.RECORDING_MISSING, "the recording file is not on the PBX")
    ext = file_extension(call["recording_file"])
    return f"{base_url.rstrip('/')}/recording/{call['id']}.{ext}?{signer.query(call['id'], ext)}"
