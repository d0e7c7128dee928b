"""stats/call-details: the facts of calls by id, from the call store.

:func:`parse_ids` and :func:`details` are pure; :func:`fetch` is the one query (by primary
key, with ``isNewCall`` answered by the ``calls_by_external`` index in the same
statement).  Types follow the seed's example: every value a string except ``waitsec`` (a
number) and ``dstNumbers`` (a list of strings).  ``customerData`` is the CRM's own
knowledge and is left out.  Employee names and ``didName`` come from :mod:`.names` (the
directory file over FreePBX's database).
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

from .directory import Directory, Employee
from .errors import ApiError, Code
from .freepbx_db import FreePbxSource
from .names import current_names

MAX_IDS = 500
_MAX_ID = 2 ** 63 - 1
ONLINE = "ONLINE"

_QUERY = """
SELECT c.*,
       c.external_number != '' AND EXISTS (
           SELECT 1 FROM calls p
           WHERE p.external_number = c.external_number
             AND (p.started_at < c.started_at OR (p.started_at = c.started_at AND p.id < c.id))
       ) AS seen_before
FROM calls c
WHERE c.id IN ({marks})
"""


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
        rows = conn.execute(_QUERY.format(marks=",".join("?" * len(chunk))), chunk).fetchall()
        for row in rows:
            call = dict(row)
            seen = bool(call.pop("seen_before"))
            call["dst_numbers"] = json.loads(call["dst_numbers"] or "[]")
            found.append((call, seen))
    return found


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


def details(call: Mapping[str, Any], seen_before: bool, employees: Mapping[str, Employee],
            company_id: str, now: float, did_name: str = "") -> Dict[str, Any]:
    """One entry of ``callDetails``; ``employees`` by extension, ``did_name`` the name of
    the number an incoming call dialled."""
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

    dst_numbers = [str(n) for n in call.get("dst_numbers") or []]
    if not dst_numbers and not incoming and call.get("external_number"):
        dst_numbers = [call["external_number"]]  # an outgoing call tried the number dialled

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
        "employeeName": employee.name if employee else "",
        "employeeEmail": employee.email if employee else "",
        "dstNumbers": dst_numbers,
        "waitsec": waitsec,
        "billsec": str(billsec),
        "disposition": disposition,
        "isNewCall": "0" if seen_before or not call.get("external_number") else "1",
        "did": (call.get("did") or "") if incoming else "",
        "didNumber": (call.get("did") or "") if incoming else "",
        "didName": did_name if incoming else "",
        "trunkNumber": "" if incoming else (call.get("trunk") or ""),
    }


def call_details(conn: sqlite3.Connection, params: Mapping[str, Any], directory: Optional[Directory],
                 company_id: str, now: float, freepbx: Optional[FreePbxSource] = None,
                 country_code: str = "380", trunk_prefix: str = "0") -> Dict[str, Any]:
    """The whole answer: ``callDetails`` keyed by id (as a string), in the order asked."""
    ids = parse_ids(params)
    found = {call["id"]: (call, seen) for call, seen in fetch(conn, ids)}
    names = current_names(directory, freepbx, country_code, trunk_prefix) if found else None
    entries = {}
    for i in ids:
        if i in found:
            call, seen = found[i]
            did_name = names.did_name(call.get("did") or "", call.get("src_number") or "") \
                if call["direction"] == "in" else ""
            entries[str(i)] = details(call, seen, names.employees, company_id, now, did_name)
    return {"status": "success", "callDetails": entries}
