"""stats/call-details: the facts of calls by id, from the call store; and the one entry of
``callDetails`` that every stats method answers with.

:func:`parse_ids`, :func:`details` and :func:`attempts` are pure; :func:`fetch` is the one
query (by primary key, with ``isNewCall`` answered by the ``calls_by_external`` index in the
same statement), and :data:`SELECT_CALLS` the same select for the other stats methods.
Keys, their order and their types are Binotel's (docs/api.md lists them): every value a
string except ``waitsec`` (a number) and ``dstNumbers`` (a list of objects, one per number
the call tried, each with ``dstNumber``, ``waitsec``, ``billsec``, ``disposition``,
``employeeName``, ``employeeEmail``).  ``customerData`` is the CRM's own knowledge: always
``""``, as Binotel sends it for a client it does not know.  Employee names, ``didName`` and
``trunkNumber`` come from :mod:`.names` (the directory file and the settings over FreePBX's
database).
"""

from __future__ import annotations

import functools
import json
import sqlite3
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

from .directory import Employee
from .errors import ApiError, Code
from .names import Names

MAX_IDS = 500
_MAX_ID = 2 ** 63 - 1
ONLINE = "ONLINE"

# Whether the client's number was on an earlier call (isNewCall), by the calls_by_external index.
_SEEN_BEFORE = ("c.external_number != '' AND EXISTS (SELECT 1 FROM calls p WHERE p.external_number = c.external_number"
                " AND (p.started_at < c.started_at OR (p.started_at = c.started_at AND p.id < c.id))) AS seen_before")
# Every stats method selects calls this way (a WHERE clause follows): the row, and seen_before.
SELECT_CALLS = f"SELECT c.*, {_SEEN_BEFORE}\nFROM calls c\n"
# The columns an entry is made of (:func:`entries`, :func:`details` and :func:`attempts`
# read no other): for a hundred calls, reading only these takes an eighth less time.
ENTRY_COLUMNS = ("id", "direction", "started_at", "answered_at", "ended_at", "billsec", "disposition",
                 "external_number", "src_number", "did", "internal_number", "answered_by", "transferred_to",
                 "dst_numbers", "trunk")
_QUERY = (f"SELECT {', '.join('c.' + column for column in ENTRY_COLUMNS)}, {_SEEN_BEFORE}\nFROM calls c\n"
          "WHERE c.id IN ({marks})")


def parse_id(value: Any, name: str) -> int:
    """A call id as the CRM may send it: a number, or a string of digits."""
    if isinstance(value, bool):
        raise ApiError(Code.INVALID_PARAMETER, f"{name} must hold call ids (numbers or strings of digits)")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 19:
        number = int(value)
    else:
        raise ApiError(Code.INVALID_PARAMETER, f"{name} must hold call ids (numbers or strings of digits)")
    if not 0 < number <= _MAX_ID:
        raise ApiError(Code.INVALID_PARAMETER, f"{name} must hold call ids (numbers or strings of digits)")
    return number


def parse_ids(params: Mapping[str, Any]) -> List[int]:
    """``generalCallID``: one id, or a list of them; duplicates collapse, order is kept."""
    if "generalCallID" not in params:
        raise ApiError(Code.MISSING_PARAMETER, "missing parameter: generalCallID")
    value = params["generalCallID"]
    values = value if isinstance(value, list) else [value]
    if len(values) > MAX_IDS:
        raise ApiError(Code.INVALID_PARAMETER, f"generalCallID: at most {MAX_IDS} ids per request")
    return list(dict.fromkeys(parse_id(v, "generalCallID") for v in values))


def fetch(conn: sqlite3.Connection, ids: Iterable[int]) -> List[Tuple[Dict[str, Any], bool]]:
    """The stored calls among ``ids``, each with whether its client's number was seen on
    an earlier call."""
    ids = list(ids)
    found = []
    for start in range(0, len(ids), MAX_IDS):
        chunk = ids[start:start + MAX_IDS]
        # Plain tuples zipped with the column names: cheaper than dict() of sqlite3.Row.
        cursor = conn.cursor()
        cursor.row_factory = None
        rows = cursor.execute(_QUERY.format(marks=",".join("?" * len(chunk))), chunk).fetchall()
        columns = [column[0] for column in cursor.description]
        found.extend(_call_and_seen(dict(zip(columns, row))) for row in rows)
    return found


def call_and_seen(row: sqlite3.Row) -> Tuple[Dict[str, Any], bool]:
    """A row of :data:`SELECT_CALLS`: the call, and whether its number was seen before."""
    return _call_and_seen(dict(row))


def _call_and_seen(call: Dict[str, Any]) -> Tuple[Dict[str, Any], bool]:
    seen = bool(call.pop("seen_before"))
    call["dst_numbers"] = list(_dst_numbers(call["dst_numbers"] or "[]"))
    return call, seen


@functools.lru_cache(maxsize=4096)
def _dst_numbers(text: str) -> Tuple[Any, ...]:
    """The numbers a call rang, stored as JSON; a few hundred lists ("[\"801\"]") recur."""
    return tuple(json.loads(text))


def _seconds(later: Optional[float], earlier: Optional[float]) -> int:
    if later is None or earlier is None:
        return 0
    return max(0, int(round(later - earlier)))


def employee_extension(call: Mapping[str, Any]) -> str:
    """The extension whose employee the call belongs to: who has (or last had) the client
    of an answered incoming call (after transfers: the last one's target), else the
    extension or group it rang; the caller of an outgoing call."""
    if call["direction"] == "in" and call.get("answered_at"):
        return call.get("transferred_to") or call.get("answered_by") or call.get("internal_number") or ""
    return call.get("internal_number") or ""


def attempts(call: Mapping[str, Any], employees: Mapping[str, Employee], waitsec: int, billsec: int,
             disposition: str) -> List[Dict[str, Any]]:
    """``dstNumbers``: one object per number the call tried, in the order they were tried.

    The store keeps what was rung, who answered and who had the client last, not each
    attempt's own times, so an attempt's fields are derived: ``waitsec`` is the call's;
    the employee who has (or last had) the client gets the call's ``billsec`` and
    disposition (``ONLINE`` while it is up), the one who answered and then transferred
    ``TRANSFER``, the ring group or queue it came through the call's result, and the other
    numbers rung ``NOANSWER`` when someone else answered, else the call's disposition.  An
    outgoing call's own extension is its caller, not an attempt."""
    incoming = call["direction"] == "in"
    numbers = [str(n) for n in call.get("dst_numbers") or []]
    if not incoming:
        numbers = [n for n in numbers if n != (call.get("internal_number") or "")]
        if not numbers and call.get("external_number"):
            numbers = [call["external_number"]]  # an outgoing call tried the number dialled
    answered = bool(call.get("answered_at"))
    first = call.get("answered_by") or ""
    last = employee_extension(call) if incoming else (first or (numbers[0] if len(numbers) == 1 else ""))
    group = (call.get("internal_number") or "") if incoming else ""
    entries = []
    for number in numbers:
        talked, result = 0, disposition
        if answered and number == last:
            talked, result = billsec, ("ONLINE" if disposition == ONLINE else "ANSWER")
        elif answered and number == first and incoming:
            result = "TRANSFER"
        elif answered and number == group:
            talked = billsec
        elif answered:
            result = "NOANSWER"
        employee = employees.get(number)
        entries.append({
            "dstNumber": number,
            "waitsec": waitsec,
            "billsec": str(talked),
            "disposition": result,
            "employeeName": employee.name if employee else "",
            "employeeEmail": employee.email if employee else "",
        })
    return entries


def details(call: Mapping[str, Any], seen_before: bool, employees: Mapping[str, Employee],
            company_id: str, now: float, did_name: str = "", trunk_number: str = "") -> Dict[str, Any]:
    """One entry of ``callDetails``; ``employees`` by extension, ``did_name`` the name of
    the number an incoming call dialled, ``trunk_number`` the number an outgoing one went
    out through."""
    incoming = call["direction"] == "in"
    online = call.get("ended_at") is None
    answered_at = call.get("answered_at")
    extension = employee_extension(call)
    group = call.get("internal_number") or ""
    employee = employees.get(extension)

    if answered_at:
        waitsec = _seconds(answered_at, call["started_at"])
        billsec = _seconds(now, answered_at) if online else int(call.get("billsec") or 0)
    else:
        waitsec = _seconds(now if online else call["ended_at"], call["started_at"])
        billsec = 0
    if online:
        disposition = ONLINE
    else:
        disposition = call.get("disposition") or ("ANSWER" if answered_at else "CANCEL")

    return {
        "companyID": company_id,
        "generalCallID": str(call["id"]),
        "callID": str(call["id"]),
        "startTime": str(int(call["started_at"])),
        "callType": "0" if incoming else "1",
        "internalNumber": extension,
        "internalAdditionalData": f"{group} > " if incoming and answered_at and group and group != extension else "",
        "externalNumber": call.get("external_number") or "",
        "srcNumber": call.get("src_number") or "",
        "customerData": "",
        "employeeName": employee.name if employee else "",
        "employeeEmail": employee.email if employee else "",
        "dstNumbers": attempts(call, employees, waitsec, billsec, disposition),
        "waitsec": waitsec,
        "billsec": str(billsec),
        "disposition": disposition,
        "isNewCall": "0" if seen_before or not call.get("external_number") else "1",
        "did": (call.get("did") or "") if incoming else "",
        "didNumber": (call.get("did") or "") if incoming else "",
        "didName": did_name if incoming else "",
        "trunkNumber": "" if incoming else trunk_number,
    }


def entries(found: Iterable[Tuple[Mapping[str, Any], bool]], names: Names, company_id: str,
            now: float) -> Dict[str, Dict[str, Any]]:
    """``callDetails``: the entries of ``found`` keyed by id (as a string), in its order."""
    answer = {}
    for call, seen in found:
        incoming = call["direction"] == "in"
        did_name = names.did_name(call.get("did") or "", call.get("src_number") or "") if incoming else ""
        trunk_number = "" if incoming else names.trunk_number(call.get("trunk") or "")
        answer[str(call["id"])] = details(call, seen, names.employees, company_id, now, did_name, trunk_number)
    return answer


def call_details(conn: sqlite3.Connection, params: Mapping[str, Any], names_now: Callable[[], Names],
                 company_id: str, now: float) -> Dict[str, Any]:
    """The whole answer: ``callDetails`` keyed by id (as a string), in the order asked.
    ``names_now`` is asked only when a call was found (it may wait for FreePBX's first read)."""
    ids = parse_ids(params)
    found = {call["id"]: (call, seen) for call, seen in fetch(conn, ids)}
    in_order = [found[i] for i in ids if i in found]
    return {"status": "success", "callDetails": entries(in_order, names_now(), company_id, now) if in_order else {}}
