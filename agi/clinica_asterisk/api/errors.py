"""The API's error codes, in one place (docs/api.md has the same table).

Every error reaches the CRM as HTTP 200 ``{"status":"error","code":N,"message":"…"}``,
signed like any answer, because Binotel's PHP client discards anything else unread.  Only
what never reached a method gets another HTTP status (no such route, body too large).
Messages are fixed texts: nothing from the request is ever echoed into a signed answer.
"""

from __future__ import annotations

import enum


class Code(enum.IntEnum):
    BAD_JSON = 100            # the body is not a JSON object (or not UTF-8)
    BODY_TOO_LARGE = 101      # HTTP 413
    NO_SUCH_METHOD = 102      # HTTP 404
    METHOD_NOT_ALLOWED = 103  # HTTP 405
    MISSING_KEY = 110         # `key` or `signature` missing or not a string
    UNKNOWN_KEY = 111
    NO_KEYS = 112             # CLINICA_API_KEYS is empty: the API is off
    BAD_SIGNATURE = 120
    MISSING_PARAMETER = 130
    INVALID_PARAMETER = 131
    PERIOD_TOO_LONG = 132     # a stats period (or a "since") longer than the method allows
    TOO_MANY_CALLS = 133      # more calls than one answer holds: ask for a shorter period
    UNSUPPORTED_PARAMETER = 134  # a Binotel option this PBX cannot do (named in the message)
    UNKNOWN_EXTENSION = 140   # click-to-call: no such extension (FreePBX, else the directory file)
    NO_SUCH_CALL = 150
    NO_RECORDING = 151        # the call has no recording
    RECORDING_MISSING = 152   # the recording's file is not on disk
    CALL_NOT_ONLINE = 153     # hangup-call: the call has ended, or Asterisk has no channel of it
    CLICK_TO_CALL_OFF = 160   # no AMI user configured: click-to-call and hangup-call are off
    AMI_UNREACHABLE = 161
    AMI_LOGIN_FAILED = 162
    AMI_REFUSED = 163         # Asterisk answered the Originate with an error
    AMI_TIMEOUT = 164
    EXTENSION_NO_ANSWER = 165  # click-to-call with async FALSE: the extension did not take the call
    STORE_UNAVAILABLE = 170
    INTERNAL = 199


class ApiError(Exception):
    """An answer of status ``error``.  ``http_status`` stays 200 for anything a method
    decided."""

    def __init__(self, code: Code, message: str, http_status: int = 200):
        super().__init__(message)
        self.code = Code(code)
        self.message = message
        self.http_status = http_status

    def answer(self) -> dict:
        return {"status": "error", "code": int(self.code), "message": self.message}
