"""Binotel's shapes, for the tests: the JSON Schemas of docs/openapi.yaml (one definition for
the server's description, the fuzzing and these checks) and the key orders Binotel sends."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import jsonschema
import yaml

OPENAPI = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"

# The order of the keys of one callDetails entry and of one dstNumbers object (docs/api.md).
CALL_DETAILS_KEYS = ["companyID", "generalCallID", "callID", "startTime", "callType", "internalNumber",
                     "internalAdditionalData", "externalNumber", "srcNumber", "customerData", "employeeName",
                     "employeeEmail", "dstNumbers", "waitsec", "billsec", "disposition", "isNewCall", "did",
                     "didNumber", "didName", "trunkNumber"]
DST_NUMBER_KEYS = ["dstNumber", "waitsec", "billsec", "disposition", "employeeName", "employeeEmail"]
PUSH_SCHEMAS = {"receivedTheCall": "ReceivedTheCallPush", "answeredTheCall": "AnsweredTheCallPush",
                "transferredTheCall": "TransferredTheCallPush", "hangupTheCall": "HangupTheCallPush"}


@lru_cache(maxsize=None)
def _validator(name: str) -> jsonschema.Draft202012Validator:
    schemas = yaml.safe_load(OPENAPI.read_text(encoding="utf-8"))["components"]["schemas"]
    defs = json.loads(json.dumps(schemas).replace('"#/components/schemas/', '"#/$defs/'))
    schema = {"$defs": defs, "$ref": f"#/$defs/{name}"}
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def check(instance: Any, name: str) -> None:
    """Raise jsonschema's ValidationError unless ``instance`` has the shape ``name``."""
    _validator(name).validate(instance)


def check_call_details(answer: Mapping[str, Any]) -> None:
    """A callDetails answer: its schema, and Binotel's key order in every entry."""
    check(answer, "CallDetailsAnswer")
    for entry in answer["callDetails"].values():
        assert list(entry) == CALL_DETAILS_KEYS, list(entry)
        for attempt in entry["dstNumbers"]:
            assert list(attempt) == DST_NUMBER_KEYS, list(attempt)


def check_push(push: Mapping[str, str]) -> None:
    check(dict(push), PUSH_SCHEMAS[push["requestType"]])
    assert list(push)[-1] == "requestType"
