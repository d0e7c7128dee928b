"""The stats methods that list calls: by period, since a moment, per day, per employee, the
calls up now, today's lost calls, a client's history.

Every one answers as ``stats/call-details`` does (``callDetails`` keyed by the call id, each
entry :func:`call_details.details`), from one indexed query of the call store:

| method | selects | index |
|---|---|---|
| ``incoming-calls-for-period``, ``outgoing-calls-for-period`` | one direction, ``startTime`` ≤ start ≤ ``stopTime`` | ``calls_by_direction_start`` |
| ``all-incoming-calls-since``, ``all-outgoing-calls-since`` | one direction, start ≥ ``timestamp`` | ``calls_by_direction_start`` |
| ``list-of-calls-for-period``, ``list-of-calls-per-day`` | both directions in the period / the local day | ``calls_by_start`` |
| ``list-of-calls-by-internal-number-for-period`` | calls the extension rang for, answered, made or was transferred | ``calls_by_start`` |
| ``online-calls`` | calls not ended, less those Asterisk no longer has | ``calls_online`` (partial) |
| ``list-of-lost-calls-today`` | today's incoming calls nobody answered, whose number no later answered call had | ``calls_by_direction_start``, ``calls_by_external`` |
| ``history-by-number``, ``history-by-external-number`` | calls with those client numbers | ``calls_by_external`` |

Limits, as Binotel has them, so that no request can turn into a long scan: a period (or a
"since") is at most :data:`PERIOD_LIMITS_S` long, else error 132; an answer holds at most
:data:`MAX_CALLS` calls, else error 133 (never a cut list: the CRM would take it for all);
``list-of-calls-per-day``, which has no shorter period to ask for, :data:`MAX_CALLS_PER_DAY`.
Parsing the parameters and the day's bounds are pure functions; the queries take a
connection.
"""

from __future__ import annotations

import datetime
import logging
import sqlite3
from typing import Any, Callable, Dict, FrozenSet, Iterable, List, Mapping, Optional, Sequence, Tuple

from ..calls.phone import digits_of, normalize
from .call_details import SELECT_CALLS, call_and_seen, entries
from .errors import ApiError, Code
from .names import Names

log = logging.getLogger("clinica_asterisk.api.stats")

MAX_CALLS = 2000
MAX_CALLS_PER_DAY = 10000
DAY_S = 24 * 3600
# Longest period (stopTime - startTime, or now - timestamp) per method, in seconds.
PERIOD_LIMITS_S = {
    "stats/incoming-calls-for-period": 31 * DAY_S,
    "stats/outgoing-calls-for-period": 31 * DAY_S,
    "stats/all-incoming-calls-since": 31 * DAY_S,
    "stats/all-outgoing-calls-since": 31 * DAY_S,
    "stats/list-of-calls-for-period": DAY_S,
    "stats/list-of-calls-by-internal-number-for-period": 7 * DAY_S,
}
MAX_NUMBERS = 100  # client numbers in one history request
_MAX_TIMESTAMP = 10 ** 10  # year 2286: anything larger is not a unix time in seconds
_EXTENSION_DIGITS = 8

Found = List[Tuple[Dict[str, Any], bool]]


# --- parameters (pure) -------------------------------------------------------------------

def parse_time(params: Mapping[str, Any], name: str) -> int:
    """A unix time in seconds, as a number or a string of digits."""
    if name not in params:
        raise ApiError(Code.MISSING_PARAMETER, f"missing parameter: {name}")
    value = params[name]
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 11:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < _MAX_TIMESTAMP:
        raise ApiError(Code.INVALID_PARAMETER, f"{name} must be a unix time in seconds")
    return value


def parse_period(params: Mapping[str, Any], limit_s: int) -> Tuple[int, int]:
    """``startTime`` and ``stopTime`` (both included), at most ``limit_s`` apart."""
    start, stop = parse_time(params, "startTime"), parse_time(params, "stopTime")
    if stop < start:
        raise ApiError(Code.INVALID_PARAMETER, "stopTime must not be before startTime")
    if stop - start > limit_s:
        raise ApiError(Code.PERIOD_TOO_LONG, f"the period is longer than {_duration(limit_s)}: ask for a shorter one")
    return start, stop


def parse_since(params: Mapping[str, Any], now: float, limit_s: int) -> int:
    """``timestamp``: the start of a period that ends now, at most ``limit_s`` long."""
    since = parse_time(params, "timestamp")
    if now - since > limit_s:
        raise ApiError(Code.PERIOD_TOO_LONG,
                       f"timestamp is more than {_duration(limit_s)} ago: ask for a shorter period")
    return since


def _duration(seconds: int) -> str:
    days = seconds // DAY_S
    return f"{days} days" if days > 1 else "24 hours"


def parse_extension(params: Mapping[str, Any], name: str = "internalNumber") -> str:
    if name not in params:
        raise ApiError(Code.MISSING_PARAMETER, f"missing parameter: {name}")
    value = params[name]
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        value = str(value)
    if not (isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= _EXTENSION_DIGITS):
        raise ApiError(Code.INVALID_PARAMETER, f"{name} must be an extension of 1 to {_EXTENSION_DIGITS} digits")
    return value


def day_bounds(timestamp: float, tz: Optional[datetime.tzinfo] = None) -> Tuple[float, float]:
    """The local day (the PBX's time zone, or ``tz``) holding ``timestamp``: [start, end)."""
    moment = datetime.datetime.fromtimestamp(timestamp, tz)
    midnight = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    following = (midnight + datetime.timedelta(days=1, hours=2)).replace(hour=0)  # a DST day is 23 or 25 h
    return midnight.timestamp(), following.timestamp()


def parse_numbers(params: Mapping[str, Any], name: str) -> List[str]:
    """One client number or a list of them (strings; a number is taken as its digits)."""
    if name not in params:
        raise ApiError(Code.MISSING_PARAMETER, f"missing parameter: {name}")
    value = params[name]
    values = value if isinstance(value, list) else [value]
    if not values:
        raise ApiError(Code.INVALID_PARAMETER, f"{name} must hold at least one phone number")
    if len(values) > MAX_NUMBERS:
        raise ApiError(Code.INVALID_PARAMETER, f"{name}: at most {MAX_NUMBERS} numbers per request")
    numbers = []
    for item in values:
        if isinstance(item, int) and not isinstance(item, bool) and item > 0:
            item = str(item)
        number = digits_of(item) if isinstance(item, str) and len(item) <= 40 else ""
        if len(number.lstrip("+")) < 3 or any(ch not in "+0123456789 -()" for ch in item):
            raise ApiError(Code.INVALID_PARAMETER, f"{name} must hold phone numbers (+380…, 380…, 0…)")
        numbers.append(number)
    return list(dict.fromkeys(numbers))


def number_forms(numbers: Iterable[str], number_format: str, country_code: str, trunk_prefix: str) -> List[str]:
    """Every spelling under which the store may hold these numbers: the configured format's
    (what the hooks store), and national, E.164 with and without '+', as received (for a
    store kept ``raw``)."""
    forms: Dict[str, None] = {}
    for number in numbers:
        for fmt in (number_format, "national", "e164"):
            forms[normalize(number, fmt, country_code, trunk_prefix)] = None
        e164 = normalize(number, "e164", country_code, trunk_prefix)
        forms[e164.lstrip("+")] = None
        forms[number] = None
    return [f for f in forms if f]


# --- queries ---------------------------------------------------------------------------

def _select(conn: sqlite3.Connection, where: str, params: Sequence[Any], limit: int = MAX_CALLS,
            too_many: str = "ask for a shorter period") -> Found:
    """At most ``limit`` calls, oldest first, else error 133 (one row more is read to know)."""
    rows = conn.execute(f"{SELECT_CALLS} WHERE {where} ORDER BY c.started_at, c.id LIMIT ?",
                        (*params, limit + 1)).fetchall()
    if len(rows) > limit:
        raise ApiError(Code.TOO_MANY_CALLS, f"more than {limit} calls: {too_many}")
    return [call_and_seen(row) for row in rows]


def by_direction(conn: sqlite3.Connection, direction: str, start: float, stop: float) -> Found:
    return _select(conn, "c.direction = ? AND c.started_at >= ? AND c.started_at < ?", (direction, start, stop))


def in_period(conn: sqlite3.Connection, start: float, stop: float) -> Found:
    return _select(conn, "c.started_at >= ? AND c.started_at < ?", (start, stop))


def in_day(conn: sqlite3.Connection, start: float, stop: float) -> Found:
    return _select(conn, "c.started_at >= ? AND c.started_at < ?", (start, stop), MAX_CALLS_PER_DAY,
                   "ask list-of-calls-for-period for parts of the day")


def by_extension(conn: sqlite3.Connection, extension: str, start: float, stop: float) -> Found:
    """Calls the extension took part in: rung (alone, in a group, as a transfer's target),
    answered, made, or had after a transfer."""
    return _select(conn, "c.started_at >= ? AND c.started_at < ? AND (c.internal_number = ? OR c.answered_by = ? "
                         "OR c.transferred_to = ? OR instr(c.dst_numbers, ?) > 0)",
                   (start, stop, extension, extension, extension, f'"{extension}"'))


def open_calls(conn: sqlite3.Connection) -> Found:
    return _select(conn, "c.ended_at IS NULL", ())


def lost_calls(conn: sqlite3.Connection, start: float, stop: float) -> Found:
    """Incoming calls of [start, stop) that ended unanswered, from a known number that no
    later answered call (either way) had: nobody took them and nobody reached the client
    since."""
    return _select(conn, "c.direction = 'in' AND c.started_at >= ? AND c.started_at < ? AND c.answered_at IS NULL "
                         "AND c.ended_at IS NOT NULL AND c.external_number != '' AND NOT EXISTS ("
                         "SELECT 1 FROM calls l WHERE l.external_number = c.external_number "
                         "AND l.started_at > c.started_at AND l.answered_at IS NOT NULL)", (start, stop))


def by_numbers(conn: sqlite3.Connection, forms: Sequence[str]) -> Found:
    marks = ",".join("?" * len(forms))
    return _select(conn, f"c.external_number IN ({marks})", tuple(forms))


def still_up(found: Found, live: Optional[FrozenSet[str]], now: float, grace_s: float) -> Found:
    """The open calls Asterisk still has: those whose linkedid is live, without one (rows
    from before linkedids), or too young to have a channel yet; all of them when there is
    no list (``live`` None)."""
    if live is None:
        return found
    return [(call, seen) for call, seen in found
            if not call.get("linkedid") or call["linkedid"] in live or call["started_at"] > now - grace_s]


# --- the methods ---------------------------------------------------------------------------

class StatsContext:
    """What a stats method needs, from the application: the store connection, the names
    (asked only when a call was found), the settings' company id and number format, the
    clock, and Asterisk's live channel ids (None: not known)."""

    def __init__(self, conn: sqlite3.Connection, names_now: Callable[[], Names], company_id: str, now: float,
                 number_format: str = "national", country_code: str = "380", trunk_prefix: str = "0",
                 live_channels: Callable[[], Optional[FrozenSet[str]]] = lambda: None, grace_s: float = 30.0,
                 tz: Optional[datetime.tzinfo] = None):
        self.conn = conn
        self.names_now = names_now
        self.company_id = company_id
        self.now = now
        self.number_format = number_format
        self.country_code = country_code
        self.trunk_prefix = trunk_prefix
        self.live_channels = live_channels
        self.grace_s = grace_s
        self.tz = tz

    def answer(self, found: Found) -> Dict[str, Any]:
        details = entries(found, self.names_now(), self.company_id, self.now) if found else {}
        return {"status": "success", "callDetails": details}


def _period_of(method: str, direction: Optional[str]):
    def run(ctx: StatsContext, params: Mapping[str, Any]) -> Dict[str, Any]:
        start, stop = parse_period(params, PERIOD_LIMITS_S[method])
        if direction is None:
            return ctx.answer(in_period(ctx.conn, start, stop + 1))
        return ctx.answer(by_direction(ctx.conn, direction, start, stop + 1))
    return run


def _since(method: str, direction: str):
    def run(ctx: StatsContext, params: Mapping[str, Any]) -> Dict[str, Any]:
        since = parse_since(params, ctx.now, PERIOD_LIMITS_S[method])
        return ctx.answer(by_direction(ctx.conn, direction, since, ctx.now + DAY_S))
    return run


def calls_per_day(ctx: StatsContext, params: Mapping[str, Any]) -> Dict[str, Any]:
    """``dayInTimestamp``: any moment of the day (the PBX's local day); absent: today."""
    moment = parse_time(params, "dayInTimestamp") if "dayInTimestamp" in params else ctx.now
    start, stop = day_bounds(moment, ctx.tz)
    return ctx.answer(in_day(ctx.conn, start, stop))


def calls_of_extension(ctx: StatsContext, params: Mapping[str, Any]) -> Dict[str, Any]:
    extension = parse_extension(params)
    start, stop = parse_period(params, PERIOD_LIMITS_S["stats/list-of-calls-by-internal-number-for-period"])
    return ctx.answer(by_extension(ctx.conn, extension, start, stop + 1))


def online_calls(ctx: StatsContext, params: Mapping[str, Any]) -> Dict[str, Any]:
    found = open_calls(ctx.conn)
    return ctx.answer(still_up(found, ctx.live_channels() if found else None, ctx.now, ctx.grace_s))


def lost_calls_today(ctx: StatsContext, params: Mapping[str, Any]) -> Dict[str, Any]:
    start, stop = day_bounds(ctx.now, ctx.tz)
    return ctx.answer(lost_calls(ctx.conn, start, stop))


def _history(name: str):
    def run(ctx: StatsContext, params: Mapping[str, Any]) -> Dict[str, Any]:
        numbers = parse_numbers(params, name)
        forms = number_forms(numbers, ctx.number_format, ctx.country_code, ctx.trunk_prefix)
        return ctx.answer(by_numbers(ctx.conn, forms))
    return run


METHODS: Dict[str, Callable[[StatsContext, Mapping[str, Any]], Dict[str, Any]]] = {
    "stats/incoming-calls-for-period": _period_of("stats/incoming-calls-for-period", "in"),
    "stats/outgoing-calls-for-period": _period_of("stats/outgoing-calls-for-period", "out"),
    "stats/list-of-calls-for-period": _period_of("stats/list-of-calls-for-period", None),
    "stats/all-incoming-calls-since": _since("stats/all-incoming-calls-since", "in"),
    "stats/all-outgoing-calls-since": _since("stats/all-outgoing-calls-since", "out"),
    "stats/list-of-calls-per-day": calls_per_day,
    "stats/list-of-calls-by-internal-number-for-period": calls_of_extension,
    "stats/online-calls": online_calls,
    "stats/list-of-lost-calls-today": lost_calls_today,
    "stats/history-by-number": _history("number"),
    "stats/history-by-external-number": _history("externalNumbers"),
}
