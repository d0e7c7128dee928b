"""settings/list-of-employees: who sits behind each extension, as Binotel lists employees.

``listOfEmployees`` keyed by the employee's id; on this PBX an employee is an extension
(FreePBX's extensions, with User Management's names and e-mails, under the directory
file's), so the id is the extension.  Each entry has Binotel's keys: ``employeeID``,
``name``, ``email``, ``department`` and ``endpointData`` with the ``internalNumber``; the
presence and line states Binotel's cloud knows (``presenceState``, ``extStatus``,
``endpointData.status``) are sent empty, so that a CRM reading them finds the keys.  Pure.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping

from .directory import Employee


def list_of_employees(employees: Mapping[str, Employee]) -> Dict[str, Any]:
    listed = {}
    for extension in sorted(employees, key=lambda e: (len(e), e)):
        employee = employees[extension]
        listed[extension] = {
            "employeeID": extension,
            "name": employee.name,
            "email": employee.email,
            "department": "",
            "presenceState": "",
            "extStatus": {"status": ""},
            "endpointData": {"internalNumber": extension, "status": {"status": ""}},
        }
    return {"status": "success", "listOfEmployees": listed}
