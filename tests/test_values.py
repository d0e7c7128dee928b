"""The record classes that stand in for dataclasses on the hook's path (clinica_asterisk.values)."""

import copy
import pickle

import pytest

from clinica_asterisk.calls.plans import Plan
from clinica_asterisk.config import StoreUrl
from clinica_asterisk.delivery.worker import DeliverStats
from clinica_asterisk.store.outbox import OutboxEvent
from clinica_asterisk.values import FrozenInstanceError


def test_fields_defaults_and_fresh_factories():
    a, b = Plan(), Plan(events=("x",))
    assert (a.create, a.changes, a.events, a.note) == (None, {}, (), "")
    assert b.events == ("x",) and a.changes is not Plan().changes
    assert DeliverStats(1, failed=2) == DeliverStats(sent=1, failed=2, waiting=0)
    with pytest.raises(TypeError):
        Plan(nope=1)
    with pytest.raises(TypeError):
        OutboxEvent(1, 2)  # required fields missing
    with pytest.raises(TypeError):
        DeliverStats(1, sent=1)


def test_frozen_values_compare_hash_copy_and_replace_like_dataclasses():
    e = OutboxEvent(1, 2, "receivedTheCall", {"a": "b"}, 0, None, None)
    with pytest.raises(FrozenInstanceError):
        e.attempts = 1
    assert isinstance(FrozenInstanceError("x"), AttributeError)
    leased = e.replace(lease_owner="me", lease_until=5.0)
    assert (leased.id, leased.lease_owner, e.lease_owner) == (1, "me", None)
    assert e == copy.copy(e) == pickle.loads(pickle.dumps(e)) and e != leased
    url = StoreUrl("u", "secret", "h", 3306, "db")
    assert hash(url) == hash(StoreUrl("u", "secret", "h", 3306, "db"))
    assert repr(url) == "StoreUrl(user='u', host='h', port=3306, database='db', options=())"  # no password
    stats = DeliverStats()
    stats.sent += 1
    assert stats.sent == 1 and DeliverStats.__hash__ is None
